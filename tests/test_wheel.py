"""A normal (non-editable) install ships the configs: `pip install` of the wheel, then
`sft train` from an unrelated folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY


@pytest.mark.slow
def test_wheel_install_trains_from_an_unrelated_folder(tmp_path: Path, data_dir: Path) -> None:
    source = tmp_path / "source"  # a clean copy: the build writes build/ and egg-info beside it
    shutil.copytree(REPO / "sft", source / "sft", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)

    def run(*args: str | Path, cwd: Path = tmp_path) -> str:
        done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", tmp_path / "dist", source)
    wheel = next((tmp_path / "dist").glob("sft-*.whl"))
    venv = tmp_path / "venv"  # torch & co. from this environment, sft only from the wheel
    run(sys.executable, "-m", "venv", "--system-site-packages", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = run(venv / "bin" / "python", "-c", "import sft; print(sft.__file__)", cwd=elsewhere)
    assert str(venv) in found  # not this checkout
    run(venv / "bin" / "sft", "train", *TINY, f"data.dir={data_dir}", "data.max_train_samples=16",
        "data.max_eval_samples=8", "trainer.max_steps=2", f"data.cache_dir={tmp_path / 'cache'}",
        "run_dir=run", cwd=elsewhere)
    assert json.loads((elsewhere / "run" / "metrics.json").read_text())["train/steps"] == 2
