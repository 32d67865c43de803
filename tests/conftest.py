"""Shared fixtures: offline settings, the shared benchmark data, and run helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

TINY = ["model=tiny-bert", "hardware=cpu", "trainer.progress=false"]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true"}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared benchmark data; without it a test skips locally but fails in CI (CI=true),
    so CI cannot go green with its integration tests silently skipped."""
    if not DATA.is_dir():
        message = f"shared benchmark data not found at {DATA}"
        if in_ci():
            pytest.fail(f"{message} (CI is set: the data-backed tests must run)", pytrace=False)
        pytest.skip(message)
    return DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sft-cache")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `sft` command line in a fresh process."""
    return subprocess.run([sys.executable, "-m", "sft.cli", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def train_tiny(run_dir: Path, data_dir: Path, cache_dir: Path, *overrides: str) -> Path:
    """Train the tiny model in-process through the real CLI entry point; returns run_dir."""
    from sft.cli import main

    code = main(["train", *TINY, f"data.dir={data_dir}", f"data.cache_dir={cache_dir}",
                 f"run_dir={run_dir}", *overrides])
    assert code == 0
    return run_dir


def kill_at_checkpoint(argv: list[str], run_dir: Path, step: int, timeout: float = 240) -> None:
    """`sft train argv` in a fresh process, SIGKILLed as soon as checkpoints/step-<step> exists
    (a crash mid-run: no metrics.json yet)."""
    proc = subprocess.Popen([sys.executable, "-m", "sft.cli", "train", *argv], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not (run_dir / "checkpoints" / f"step-{step}").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.005)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL and not (run_dir / "metrics.json").exists()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- a short tiny-bert run shared by the resume and reproduce tests ----------------------
# 80 examples / batch 8 = 10 batches an epoch, so 12 steps cross an epoch boundary; the
# logging window (4) is out of phase with checkpoints (3), so resume must restore it.
SHORT = [*TINY, "data.max_train_samples=80", "data.max_eval_samples=32", "trainer.batch_size=8",
         "trainer.max_steps=12", "trainer.save_steps=3", "trainer.eval_steps=6",
         "trainer.log_steps=4", "optimizer.lr=1e-3"]


def short_args(data_dir: Path, cache_dir: Path) -> list[str]:
    return [*SHORT, f"data.dir={data_dir}", f"data.cache_dir={cache_dir}"]


@pytest.fixture(scope="session")
def short_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    """An uninterrupted short run: the reference that resumed and reproduced runs must equal."""
    run_dir = tmp_path_factory.mktemp("short") / "run"
    result = run_cli("train", *short_args(data_dir, cache_dir), f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def results(run_dir: Path) -> tuple[list[dict], dict]:
    """metrics.jsonl and metrics.json without wall-clock timings (which always differ)."""
    from sft.run.rundir import is_timing

    def strip(record: dict) -> dict:
        return {k: v for k, v in record.items() if not is_timing(k)}

    final = json.loads((run_dir / "metrics.json").read_text())
    return [strip(r) for r in read_jsonl(run_dir / "metrics.jsonl")], strip(final)
