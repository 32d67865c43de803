"""scripts/bench.py --full in its --quick form: one epoch each of sft and the HF Trainer on a
small SST-2 subset, both the same number of steps, with sft's per-phase breakdown adding up
to its wall time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_full_case_quick_form(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--full",
                             "--quick", "--train-samples", "320", "--eval-samples", "64",
                             "--data-dir", str(data_dir), "--output", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=380)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "where the run's time goes" in result.stdout
    cases = json.loads(out.read_text())["cases"]
    sft, hf = cases["sft fp32"]["median"], cases["HF best fp32"]["median"]
    assert sft["steps"] == hf["steps"] == 10  # one epoch of 320 examples in batches of 32
    for med in (sft, hf):
        assert med["samples_per_s"] > 0 and 0 <= med["accuracy"] <= 1
        assert 0 <= med["padding_fraction"] < 1
    # sft's length grouping pads no more than HF's group_by_length on the same data (on small
    # sets HF's mega-batches shrink to 4 batches: 0.52 vs sft's 0.19 on these 320 examples)
    assert sft["padding_fraction"] <= hf["padding_fraction"] + 0.01
    phases = ["data", "forward", "backward", "optimizer", "evaluation", "checkpoint", "other"]
    total = sum(sft[f"phase/{p}_s"] for p in phases)
    assert total == pytest.approx(sft["phase/wall_s"], rel=0.01)
    assert sft["phase/forward_s"] > 0 and sft["phase/backward_s"] > 0
    assert "vs_hf_best" in sft
