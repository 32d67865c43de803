"""Step-exact resume: a run killed at any point and resumed ends exactly like one that was
never interrupted (CPU, tiny-bert); checkpoint integrity (manifest, pruning, best/)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHORT, read_jsonl, results, run_cli, short_args

from sft.train import checkpoint


def start(args: list[str], cwd: Path = REPO) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "sft.cli", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def signal_when(proc: subprocess.Popen, folder: Path, ready, sig: int) -> list[str]:
    """Send `sig` as soon as ready(names in folder) holds; returns the names it saw."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        names = os.listdir(folder) if folder.is_dir() else []
        if ready(names):
            proc.send_signal(sig)
            return names
        time.sleep(0.002)
    pytest.fail(f"the run ended before the signal point: {proc.stderr.read()[-2000:]}")


def resume(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    result = run_cli("train", f"resume={run_dir}", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


FINAL_STEP = int(next(a.split("=")[1] for a in SHORT if a.startswith("trainer.max_steps=")))


def assert_stopped_mid_run(run_dir: Path) -> set[str]:
    """After the process died: the run had not finished (no metrics.json, no final checkpoint,
    no final log line), so the resume that follows really has steps left to do. Returns the
    names in checkpoints/ as the kill left them."""
    names = set(os.listdir(run_dir / "checkpoints"))
    assert not (run_dir / "metrics.json").exists()
    assert not {f"step-{FINAL_STEP}", f".tmp-step-{FINAL_STEP}"} & names, names
    logged = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert logged and max(logged) < FINAL_STEP, logged
    return names


def resumed_step(stderr: str) -> int:
    found = re.search(rf"resumed from \S+ \(step (\d+) of {FINAL_STEP}\)", stderr)
    assert found, stderr[-2000:]
    return int(found[1])


@pytest.mark.slow
def test_sigkill_mid_training_resumes_to_the_same_metrics(short_run, data_dir, cache_dir,
                                                          tmp_path):
    run_dir = tmp_path / "run"
    proc = start([*short_args(data_dir, cache_dir), f"run_dir={run_dir}"])
    signal_when(proc, run_dir / "checkpoints", lambda names: "step-6" in names, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    left = assert_stopped_mid_run(run_dir)
    assert f"step-{resumed_step(resume(run_dir).stderr)}" in left  # not retrained from scratch
    assert results(run_dir) == results(short_run)  # every logged loss, lr, eval, final metric
    steps = [(r["split"], r["step"]) for r in results(run_dir)[0]]
    assert len(steps) == len(set(steps))  # appended without duplicates


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_and_corrupt_newest(short_run, data_dir, cache_dir,
                                                            tmp_path):
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    proc = start([*short_args(data_dir, cache_dir), f"run_dir={run_dir}"])
    seen = signal_when(proc, checkpoints, lambda names: ".tmp-step-9" in names, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL and ".tmp-step-9" in seen
    left = assert_stopped_mid_run(checkpoints.parent)
    assert ".tmp-step-9" in left and "step-9" not in left  # killed inside the write
    # also corrupt the newest complete checkpoint: one flipped byte in its weights
    newest = checkpoint.list_checkpoints(checkpoints)[-1]
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = resume(run_dir)
    assert resumed_step(result.stderr) < checkpoint.step_of(newest)  # an older, intact one
    assert f"skipping checkpoint {newest}" in result.stderr
    assert "sha256" in result.stderr
    assert results(run_dir) == results(short_run)
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_latest_continues(short_run, data_dir,
                                                                cache_dir, tmp_path):
    # default run dir (runs/<task>/<model>/<time> under the working directory)
    proc = start(short_args(data_dir, cache_dir), cwd=tmp_path)
    root = tmp_path / "runs" / "sentiment" / "tiny-bert"
    while not root.is_dir() or not list(root.iterdir()):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.01)
    run_dir = next(root.iterdir())
    signal_when(proc, run_dir / "checkpoints", lambda names: "step-3" in names, signal.SIGTERM)
    assert proc.wait() == 128 + signal.SIGTERM
    stderr = proc.stderr.read()
    assert f"resume with: sft train resume={run_dir}" in stderr
    saved = checkpoint.latest_valid(run_dir / "checkpoints")
    assert saved is not None and checkpoint.step_of(saved) >= 3
    assert_stopped_mid_run(run_dir)
    result = run_cli("train", *short_args(data_dir, cache_dir), "resume=latest", cwd=tmp_path,
                     env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from {saved} " in result.stderr
    assert results(run_dir) == results(short_run)
    assert len(list(root.iterdir())) == 1  # continued in place, no new run dir


@pytest.mark.slow
def test_a_run_dir_holding_a_run_is_refused_without_resume(short_run):
    from sft.config.compose import load_run as load_run_config
    from sft.errors import ConfigError
    from sft.run.rundir import RunDir
    from sft.run.runner import resume_point

    run = load_run_config(short_run)
    with pytest.raises(ConfigError, match=f"continue it with resume={short_run}"):
        resume_point(run, RunDir(short_run))


# -- checkpoint integrity, in-process ---------------------------------------------------
def _fake_checkpoint(checkpoints: Path, step: int) -> Path:
    def write(tmp: Path) -> None:
        torch.save({"step": step}, tmp / checkpoint.STATE_FILE)
        (tmp / "model.safetensors").write_bytes(bytes(range(256)) * 4)

    return checkpoint.atomic_folder_write(checkpoints / f"step-{step}", write)


def test_manifest_detects_half_written_and_corrupt_checkpoints(tmp_path, caplog):
    checkpoints = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        _fake_checkpoint(checkpoints, step)
    assert checkpoint.verify(checkpoints / "step-6") is None
    (checkpoints / "step-6" / checkpoint.MANIFEST).unlink()  # as if killed before the manifest
    weights = checkpoints / "step-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")  # same size, different content
    assert checkpoint.latest_valid(checkpoints) == checkpoints / "step-2"
    assert "step-6: no readable manifest.json" in caplog.text
    assert "step-4: model.safetensors does not match its sha256" in caplog.text
    # the cheap listing (sizes only) still catches the missing manifest
    assert checkpoint.list_checkpoints(checkpoints) == [checkpoints / "step-2",
                                                        checkpoints / "step-4"]


def test_keep_last_prunes_old_checkpoints_but_never_best(tmp_path):
    run_dir = tmp_path / "run"
    best = checkpoint.atomic_folder_write(run_dir / "best",
                                          lambda tmp: (tmp / "model.safetensors").write_text("b"))
    for step in (1, 2, 3, 4):
        _fake_checkpoint(run_dir / "checkpoints", step)
        checkpoint.prune(run_dir / "checkpoints", keep_last=2)
    assert [p.name for p in checkpoint.list_checkpoints(run_dir / "checkpoints")] == [
        "step-3", "step-4"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-3", "step-4"]
    assert checkpoint.verify(best) is None
