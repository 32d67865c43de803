"""env.json: everything besides the config that can change a run's result (versions,
packages, git state, device, data and model file hashes); `sft reproduce` compares it."""

from __future__ import annotations

import importlib.metadata
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import hydra
import numpy
import tokenizers
import torch
import transformers

from sft.config.schema import RunConfig


def git_state(cwd: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        return {"commit": sha or None, "dirty": bool(git("status", "--porcelain")) if sha else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def user_command(overrides: list[str]) -> str:
    """The command line as typed (`sft ...`, also when started as `python -m sft.cli`);
    for an in-process call, the equivalent `sft train` command."""
    argv = list(sys.orig_argv)
    for i, arg in enumerate(argv):
        if arg == "sft.cli" or Path(arg).name == "sft":
            return shlex.join(["sft", *argv[i + 1:]])
    return shlex.join(["sft", "train", *overrides])


def pip_freeze() -> list[str]:
    """`name==version` of every installed distribution (what `pip freeze` lists), sorted;
    read from package metadata, which is faster than a pip subprocess and needs no pip."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in found:  # the first on sys.path is the one imported
            found[name.lower()] = f"{name}=={dist.version}"
    return [found[k] for k in sorted(found)]


def environment(run: RunConfig, device: str, overrides: list[str], data_files: dict[str, str],
                model_files: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything that can change a run's result besides its config; `sft reproduce`
    compares it with the current environment before re-running."""
    return {
        "command": user_command(overrides),
        "overrides": overrides,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "datasets": datasets.__version__, "hydra": hydra.__version__,
                     "tokenizers": tokenizers.__version__, "numpy": numpy.__version__},
        "pip_freeze": pip_freeze(),
        "git": git_state(Path.cwd()),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "deterministic": run.trainer.deterministic,
        "seed": run.seed,
        "data_files": data_files,
        "model_files": model_files or {},
    }
