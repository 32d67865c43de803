"""The jobs of a sweep, a cv or any set of run dirs, read back from their files: `job.json`
(status, wall time, overrides, error; written by each job when it ends), `metrics.json`,
`config.yaml` and `.hydra/overrides.yaml`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sft.config.compose import params
from sft.run.rundir import JOB_FILE

REPLICATE_KEYS = ("seed", "data.fold")  # keys averaged over, not hyperparameters
_RUN_FILES = (JOB_FILE, "metrics.json", "config.yaml", ".hydra")


@dataclass
class Job:
    name: str
    run_dir: str
    status: str  # complete | failed | incomplete
    params: dict[str, str] = field(default_factory=dict)
    value: float | None = None
    step: int | None = None
    seconds: float | None = None
    metric: str | None = None
    greater_is_better: bool = True
    error: str | None = None


@dataclass
class Summary:
    jobs: list[Job]
    metric: str
    greater_is_better: bool
    swept: list[str]  # keys whose value differs between jobs
    fixed: dict[str, str]  # overrides shared by every job
    groups: list[dict[str, Any]]  # mean ± std over REPLICATE_KEYS (empty when none swept)

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "failed"]

    @property
    def hyperparameters(self) -> list[str]:
        return [k for k in self.swept if k not in REPLICATE_KEYS]


def _read(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text()) if path.suffix == ".yaml" else json.loads(
            path.read_text())
    except (ValueError, yaml.YAMLError):
        return None


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """The run dirs at or under each path (a sweep dir, a cv dir, or run dirs)."""
    found: list[Path] = []

    def walk(path: Path) -> None:
        if any((path / name).exists() for name in _RUN_FILES):
            found.append(path)
            return
        for child in sorted(p for p in path.iterdir() if p.is_dir()):
            walk(child)

    for path in paths:
        if path.is_dir():
            walk(path)
    return sorted(set(found), key=_natural)


def _natural(path: Path) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in
                 str(path).replace("-", "/").split("/"))


def load_job(run_dir: Path, name: str | None = None) -> Job:
    record = _read(run_dir / JOB_FILE) or {}
    overrides = record.get("overrides")
    if overrides is None:
        overrides = _read(run_dir / ".hydra" / "overrides.yaml") or (
            _read(run_dir / "env.json") or {}).get("overrides", [])
    metrics = _read(run_dir / "metrics.json")
    config = _read(run_dir / "config.yaml") or _read(run_dir / ".hydra" / "config.yaml") or {}
    task = config.get("task") or {}
    status = record.get("status") or ("complete" if metrics else "incomplete")
    job = Job(name=name or run_dir.name, run_dir=str(run_dir), status=status,
              params=params(overrides), seconds=record.get("seconds"),
              greater_is_better=bool(task.get("greater_is_better", True)),  # runs before 0.2
              error=record.get("error"))
    if metrics:
        job.value, job.step = metrics.get("best/value"), metrics.get("best/step")
        job.metric = metrics.get("best/metric")
        job.greater_is_better = bool(metrics.get("best/greater_is_better", job.greater_is_better))
        job.seconds = job.seconds or metrics.get("train/runtime_s")
    if job.status == "complete" and job.value is None:
        job.status = "incomplete"
    return job


def _label(run_dir: Path, roots: list[Path]) -> str:
    for root in roots:
        if run_dir != root and root in run_dir.parents:
            return str(run_dir.relative_to(root))
    return run_dir.name if len(roots) > 1 else str(run_dir)


def collect(paths: list[Path]) -> list[Job]:
    return [load_job(d, _label(d, paths)) for d in find_run_dirs(paths)]


