"""The run directory's layout and writes: resolved config, json records (env, metrics, job),
metrics.jsonl and the model card. On non-zero DDP ranks it writes nothing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sft.config.compose import CONFIG_FILE
from sft.config.schema import RunConfig
from sft.files import write_text_atomic
from sft.tasks import task_class
from sft.tasks.text2text import CAPPED_WARNING
from sft.tracking.sinks import JsonlSink
from sft.train.checkpoint import BEST, CHECKPOINTS

__all__ = ["CONFIG_FILE", "JOB_FILE", "METRICS_LOG", "RunDir", "is_timing", "write_job_record"]
METRICS_LOG = "metrics.jsonl"
JOB_FILE = "job.json"  # a sweep job's status, written by the job itself when it ends


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
        return self.path / CHECKPOINTS

    @property
    def best(self) -> Path:
        return self.path / BEST

    def write_config(self, run: RunConfig) -> None:
        if self.is_main:
            yaml = OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(run)))
            (self.path / CONFIG_FILE).write_text(yaml)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        if self.is_main:
            write_text_atomic(self.path / name,
                              json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

    def metrics_log(self) -> JsonlSink:
        return JsonlSink(self.path / METRICS_LOG, enabled=self.is_main)

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
            f"{_warnings(metrics)}## Metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n"
            f"## Reproduce\n\n```\n{command}\nsft reproduce {self.path}\n```\n"
        )


def _warnings(metrics: dict[str, Any]) -> str:
    """What a reader must see before the scores (generations cut at max_new_tokens)."""
    lines = [f"- **{100 * v:.0f}% of the {k.split('/')[0]} generations hit "
             "task.generation.max_new_tokens**: they were cut short; raise it before trusting "
             "the scores\n" for k, v in metrics.items()
             if k.endswith("/max_new_tokens_hit") and v > CAPPED_WARNING]
    return f"## Warnings\n\n{''.join(lines)}\n" if lines else ""


def _load_best(run: RunConfig) -> str:
    return task_class(run.task.type).load_best


def write_job_record(run_dir: Path, overrides: list[str], seconds: float,
                     error: str | None = None) -> None:
    """Called by a sweep job (or cv fold) itself when it ends, successfully or not."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": "failed" if error else "complete", "seconds": round(seconds, 3),
              "overrides": overrides, "error": error}
    write_text_atomic(run_dir / JOB_FILE, json.dumps(record, indent=2) + "\n")
