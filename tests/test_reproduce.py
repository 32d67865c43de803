"""Exact reproduction on CPU: `sft reproduce`, the Hydra-native re-run, and env.json."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, read_jsonl, results, run_cli
from safetensors.torch import load_file

from sft.config.compose import load_run
from sft.run import reproduce


@pytest.mark.slow
def test_env_json_records_everything_needed_to_rerun(short_run, data_dir):
    env = json.loads((short_run / "env.json").read_text())
    assert env["command"].startswith("sft train ") and f"run_dir={short_run}" in env["command"]
    assert "model=tiny-bert" in env["overrides"]
    assert {"torch", "transformers", "datasets", "hydra"} <= env["versions"].keys()
    assert any(line.startswith("torch==") for line in env["pip_freeze"])
    assert set(env["git"]) == {"commit", "dirty"}
    assert env["device"].startswith("cpu")
    from sft.files import sha256_file

    assert env["data_files"]["train"] == sha256_file(data_dir / "sst2" / "train.tsv")
    assert set(env["model_files"]) == {"config.json"}  # model.init=random: the architecture


def assert_trained_here(run_dir: Path, since: float) -> None:
    """run_dir holds a run trained after `since`, not files copied from another run."""
    final_step = json.loads((run_dir / "metrics.json").read_text())["train/steps"]
    for written in (run_dir / "checkpoints" / f"step-{final_step}" / "model.safetensors",
                    run_dir / "best" / "model.safetensors", run_dir / "metrics.jsonl"):
        assert written.stat().st_mtime >= since - 1, written  # 1 s: coarse file-system clocks
    log = (run_dir / "train.log").read_text()
    assert f"run dir {run_dir} " in log and f"step {final_step} validation" in log


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "best" / "model.safetensors")


@pytest.mark.slow
def test_reproduce_a_finished_run_matches_exactly(short_run, tmp_path):
    target = tmp_path / "again"
    started = time.time()
    result = run_cli("reproduce", str(short_run), f"run_dir={target}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reproduced" in result.stderr and "MISMATCH" not in result.stderr
    assert "warning" not in result.stderr  # same packages, data and model files
    # two runs with the same config and seed: identical metrics files (timings aside)
    assert results(target) == results(short_run)
    assert json.loads((target / "reproduction.json").read_text())["match"] is True
    # ... because it trained again, not because it copied the old run's files
    assert_trained_here(target, started)
    command = json.loads((target / "env.json").read_text())["command"]
    assert command.startswith(f"sft reproduce {short_run} "), command
    speeds = [[r["samples_per_s"] for r in read_jsonl(d / "metrics.jsonl") if r["split"] == "train"]
              for d in (short_run, target)]
    assert speeds[0] != speeds[1]  # wall-clock timings of a real second run differ
    old, new = weights(short_run), weights(target)
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)


@pytest.mark.slow
def test_reproduce_exits_1_when_a_result_was_tampered_with(short_run, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(short_run, copy, ignore=shutil.ignore_patterns("checkpoints", "best"))
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["validation/accuracy"] += 0.01
    (copy / "metrics.json").write_text(json.dumps(metrics))
    env = json.loads((copy / "env.json").read_text())
    env["data_files"]["train"] = "0" * 64
    env["pip_freeze"] = [line.replace("torch==", "torch==0.0.") for line in env["pip_freeze"]]
    (copy / "env.json").write_text(json.dumps(env))
    result = run_cli("reproduce", str(copy), f"run_dir={tmp_path / 'again'}",
                     env={"COLUMNS": "200"})
    assert result.returncode == 1, result.stderr[-3000:]
    warnings = result.stderr.split("config\n")[0]  # printed before the run starts
    assert "data file train: sha256 differs" in warnings
    assert "package torch: 0.0." in warnings
    assert "mismatch in 1 of" in result.stderr and "validation/accuracy" in result.stderr


@pytest.mark.slow
def test_hydra_native_rerun_from_saved_config(short_run, tmp_path):
    started = time.time()
    result = run_cli("train", "--config-path", str(short_run / ".hydra"), "--config-name",
                     "config", cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "sentiment" / "tiny-bert").iterdir()  # a new run dir
    assert_trained_here(run_dir, started)
    assert results(run_dir) == results(short_run)


def test_compare_tolerances_and_timings():
    rows = reproduce.compare({"a": 1.0, "train/runtime_s": 3.0, "best/metric": "x"},
                             {"a": 1.0 + 1e-9, "train/runtime_s": 9.0, "best/metric": "x"},
                             atol=0.0, rtol=0.0)
    verdict = {r.key: r.match for r in rows}
    assert verdict == {"a": False, "train/runtime_s": None, "best/metric": True}
    rows = reproduce.compare({"a": 1.0}, {"a": 1.0 + 1e-9}, atol=0.0, rtol=1e-6)
    assert rows[0].match is True
    assert reproduce.compare({"a": 1.0}, {}, 0.0, 0.0)[0].match is False


def test_a_run_dir_of_sft_0_1_still_loads(short_run: Path, tmp_path: Path) -> None:
    """Older config.yaml files name `sft.optim.*` schedules and `task.greater_is_better`."""
    old = tmp_path / "old"
    shutil.copytree(short_run, old)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    saved["scheduler"]["_target_"] = "sft.optim.linear_schedule"
    saved["task"]["greater_is_better"] = True
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    run = load_run(old)
    assert run.scheduler["_target_"] == "sft.train.optim.linear_schedule" and run.greater_is_better
