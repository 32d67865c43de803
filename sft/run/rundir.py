"""The run directory's layout and writes: resolved config, json records (env, metrics, job),
metrics.jsonl, status.json, curves.png and the model card. On non-zero DDP ranks it writes nothing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sft.config.compose import CONFIG_FILE
from sft.config.schema import RunConfig
from sft.files import write_text_atomic
from sft.run.card import card_text
from sft.tracking.curves import CURVES_FILE, CurvesSink
from sft.tracking.sinks import JsonlSink
from sft.tracking.status import STATUS_FILE, StatusSink
from sft.train.checkpoint import BEST, CHECKPOINTS

__all__ = ["CONFIG_FILE", "CURVES_FILE", "JOB_FILE", "METRICS_LOG", "STATUS_FILE", "RunDir",
           "is_timing", "write_job_record"]
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

    def status_log(self) -> StatusSink:
        return StatusSink(self.path / STATUS_FILE, enabled=self.is_main)

    def curves(self, metric: str) -> CurvesSink:
        return CurvesSink(self.path / METRICS_LOG, self.path / CURVES_FILE, metric,
                          enabled=self.is_main)

    def write_card(self, run: RunConfig, metrics: dict[str, Any], command: str) -> None:
        """README.md of the run dir and, the same card, of best/ (what a Hub upload of best/
        shows); call it after best/ is final (an adapter merge rewrites the folder)."""
        if not self.is_main:
            return
        text = card_text(run, metrics, command, self.path, self.best)
        (self.path / "README.md").write_text(text)
        if self.best.is_dir():
            (self.best / "README.md").write_text(text)


def write_job_record(run_dir: Path, overrides: list[str], seconds: float,
                     error: str | None = None) -> None:
    """Called by a sweep job (or cv fold) itself when it ends, successfully or not."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": "failed" if error else "complete", "seconds": round(seconds, 3),
              "overrides": overrides, "error": error}
    write_text_atomic(run_dir / JOB_FILE, json.dumps(record, indent=2) + "\n")
