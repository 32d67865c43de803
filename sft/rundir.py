"""The run directory: resolved config, environment record, metrics and the model card."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sft.config import RunConfig

CONFIG_FILE = "config.yaml"
METRICS_LOG = "metrics.jsonl"
log = logging.getLogger("sft")


def is_timing(key: str) -> bool:
    """Wall-clock measurements (`*_s`/`*_ms` durations, `*_per_s` rates) differ between identical
    runs; every exactness comparison (reproduce, tests) leaves them out."""
    return key.endswith("_s")


class RunDir:
    """Everything a run writes goes through here; on non-zero DDP ranks it writes nothing."""

    def __init__(self, path: str | Path, is_main: bool = True) -> None:
        self.path = Path(path)
        self.is_main = is_main
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        return self.path / "best"

    def write_config(self, run: RunConfig) -> None:
        if self.is_main:
            yaml = OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(run)))
            (self.path / CONFIG_FILE).write_text(yaml)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        if self.is_main:
            tmp = self.path / f".{name}.tmp"
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
            tmp.replace(self.path / name)

    def log(self, record: dict[str, Any]) -> None:
        """Append one event (train window or evaluation) to metrics.jsonl."""
        if self.is_main:
            with open(self.path / METRICS_LOG, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")

    def metrics_size(self) -> int:
        path = self.path / METRICS_LOG
        return path.stat().st_size if path.is_file() else 0

    def truncate_metrics(self, size: int) -> None:
        """Drop what was logged after a checkpoint, so a resumed run appends without
        duplicating (or half-written) records."""
        if not self.is_main:
            return
        path = self.path / METRICS_LOG
        if self.metrics_size() < size:
            log.warning("%s is shorter than when the checkpoint was saved (edited or lost?); "
                        "appending to it as it is", path)
        elif path.is_file():
            os.truncate(path, size)

    def write_card(self, run: RunConfig, metrics: dict[str, Any], command: str) -> None:
        if not self.is_main:
            return
        rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                         for k, v in sorted(metrics.items()))
        data = f"`{run.data.dir}/{run.task.subdir}`" if run.data.dir else f"hub `{run.task.hub.path}`"
        (self.path / "README.md").write_text(
            f"# {run.task.name} / {run.model.name}\n\n"
            f"Fine-tuned `{run.model.name_or_path}` for **{run.task.name}** "
            f"({run.task.type}) with sft.\n\n"
            f"- data: {data}\n- seed: {run.seed}\n"
            f"- best model: `best/` (transformers: `{_load_best(run)}`; "
            f"`sft predict {self.path} --input in.jsonl --output out.jsonl`)\n\n"
            f"## Metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n"
            f"## Reproduce\n\n```\n{command}\nsft reproduce {self.path}\n```\n"
        )


def _load_best(run: RunConfig) -> str:
    from sft.tasks import task_class

    return task_class(run.task.type).load_best


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
    import datasets
    import hydra
    import numpy
    import tokenizers
    import torch
    import transformers

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
