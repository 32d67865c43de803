"""torchrun with 2 CPU processes (gloo): one run dir, written once, training in lockstep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY, read_jsonl


def test_two_process_ddp_run_writes_one_run_dir(tmp_path: Path, data_dir: Path, cache_dir: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "-m", "sft.cli", "train", *TINY, f"data.dir={data_dir}",
               f"data.cache_dir={cache_dir}", "data.max_train_samples=256",
               "data.max_eval_samples=64", "trainer.max_steps=8", "trainer.eval_steps=4",
               "trainer.log_steps=2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = list((tmp_path / "runs" / "sentiment" / "tiny-bert").iterdir())
    assert len(run_dirs) == 1  # both ranks agreed on the timestamped folder
    run_dir = run_dirs[0]
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 8
    events = read_jsonl(run_dir / "metrics.jsonl")
    assert [e["step"] for e in events if e["split"] == "train"] == [2, 4, 6, 8]  # rank 0 only
    assert (run_dir / "train.log").read_text().count("done:") == 1
    assert (run_dir / "best" / "model.safetensors").is_file()
