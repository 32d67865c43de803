"""Checkpoints written off the hot loop: the writer thread runs one write at a time while the
caller goes on, hands its errors back, and writes what the state was when it was handed over.
(A run SIGKILLed in the middle of an asynchronous write, skipped on resume, resuming to the
uninterrupted run's results: tests/test_resume.py, which runs with the default
trainer.async_checkpoint=true.)"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sft.train import checkpoint


def test_submit_returns_while_the_write_runs_and_wait_finishes_it() -> None:
    writer, release, done = checkpoint.AsyncWriter(), threading.Event(), []

    def slow_write() -> None:
        release.wait(timeout=30)
        done.append("written")

    writer.submit(slow_write)
    assert writer.busy and done == []  # the caller is back before the write ended
    release.set()
    writer.wait()
    assert done == ["written"] and not writer.busy


def test_one_write_at_a_time_in_order() -> None:
    writer, order = checkpoint.AsyncWriter(), []
    for step in range(3):
        writer.submit(lambda step=step: order.append(step))
    writer.wait()
    assert order == [0, 1, 2]


def test_a_failed_write_is_raised_to_the_caller() -> None:
    writer = checkpoint.AsyncWriter()

    def broken() -> None:
        raise OSError("disk full")

    writer.submit(broken)
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.wait()  # reported once


def test_snapshot_is_the_state_at_the_step_not_after() -> None:
    weights = {"w": torch.ones(3)}
    state = {"optimizer": {"state": {0: {"exp_avg": torch.zeros(2)}}, "step": 4}, "rng": [1, 2]}
    copy_w, copy_s = checkpoint.snapshot(weights), checkpoint.snapshot(state)
    weights["w"].add_(1)  # the loop's next step changes the originals in place
    state["optimizer"]["state"][0]["exp_avg"].add_(5)
    assert torch.equal(copy_w["w"], torch.ones(3))
    assert torch.equal(copy_s["optimizer"]["state"][0]["exp_avg"], torch.zeros(2))
    assert copy_s["optimizer"]["step"] == 4 and copy_s["rng"] == [1, 2]


def test_async_checkpoint_folder_is_complete_and_verified(tmp_path: Path, data_dir: Path,
                                                          cache_dir: Path) -> None:
    """A run's asynchronous checkpoints pass their manifest's hashes and hold the state of
    their own step; the synchronous path writes the same files."""
    from tests.conftest import train_tiny

    common = ["data.max_train_samples=64", "data.max_eval_samples=16", "trainer.batch_size=8",
              "trainer.max_steps=6", "trainer.save_steps=2", "trainer.keep_last=3",
              "trainer.eval_steps=100"]
    runs = {flag: train_tiny(tmp_path / flag, data_dir, cache_dir, *common,
                             f"trainer.async_checkpoint={flag}") for flag in ("true", "false")}
    for run_dir in runs.values():
        saved = checkpoint.list_checkpoints(run_dir / "checkpoints", hashes=True)
        assert [checkpoint.step_of(f) for f in saved] == [2, 4, 6]
        assert all(checkpoint.load_state(f)["step"] == checkpoint.step_of(f) for f in saved)
    for name in ("model.safetensors",):
        for step in (2, 4, 6):
            a, b = (load_file(run / "checkpoints" / f"step-{step}" / name)
                    for run in runs.values())
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
