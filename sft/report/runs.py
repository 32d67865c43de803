"""Past runs under a folder (`sft runs`): task, model, the overrides typed, best metric, steps,
wall time and status (complete | failed | interrupted | running | incomplete), newest first;
and the one-run report of `sft report RUN_DIR` (its row and curves.png)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sft.config.schema import TaskConfig
from sft.config.tasks import TASK_SCHEMAS
from sft.errors import SftError
from sft.report.jobs import _read, find_run_dirs, load_job
from sft.report.summary import _STATUS_STYLE, _seconds, short_value
from sft.run.rundir import CONFIG_FILE, CURVES_FILE, METRICS_LOG, STATUS_FILE
from sft.tracking.curves import plot_run, read_records
from sft.tracking.status import read_status
from sft.train.checkpoint import CHECKPOINTS, list_checkpoints, step_of

# keys with a column of their own, or that only say where the run went
_NOT_OVERRIDES = {"task", "model", "run_dir", "resume"}
_STYLE = {**_STATUS_STYLE, "running": "cyan", "interrupted": "yellow"}


@dataclass
class RunRow:
    run_dir: str
    task: str | None
    model: str | None
    overrides: dict[str, str]
    metric: str | None  # the validation metric that picks best/ (validation/<name>)
    value: float | None  # its best value (metrics.json; None until the run completes)
    greater_is_better: bool
    steps: int | None
    seconds: float | None
    status: str
    started: str | None  # ISO time the (last) training process started
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict, repr=False)  # metrics.json


def _started(run_dir: Path, status: dict[str, Any] | None) -> str:
    if status and status.get("started"):
        return status["started"]
    # runs from before status.json: config.yaml is written when training starts
    path = run_dir / CONFIG_FILE if (run_dir / CONFIG_FILE).exists() else run_dir
    return datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat(
        timespec="milliseconds")


def load_run(run_dir: Path, label: str | None = None) -> RunRow:
    """One run dir read back: job.json / metrics.json through load_job, status.json first for
    the status (with a dead "running" process read as interrupted)."""
    job = load_job(run_dir, label)
    config = _read(run_dir / CONFIG_FILE) or {}
    task, trainer = config.get("task") or {}, config.get("trainer") or {}
    status = read_status(run_dir / STATUS_FILE)
    metrics = _read(run_dir / "metrics.json") or {}
    metric = job.metric or (f"validation/{trainer.get('metric') or task.get('metric')}"
                            if task.get("metric") else None)
    row = RunRow(run_dir=job.name, task=task.get("name"), model=(config.get("model") or {}).get(
        "name"), overrides={k: v for k, v in job.params.items() if k not in _NOT_OVERRIDES},
        metric=metric, value=job.value, greater_is_better=job.greater_is_better,
        steps=metrics.get("train/steps"), seconds=job.seconds,
        status=status["status"] if status else job.status, started=_started(run_dir, status),
        error=job.error, metrics=metrics)
    if row.steps is None:  # not finished: the last step it logged or saved (resume's start)
        steps = [r["step"] for r in read_records(run_dir / METRICS_LOG) if "step" in r]
        steps += [step_of(c) for c in list_checkpoints(run_dir / CHECKPOINTS)]
        row.steps = max(steps) if steps else None
    if row.seconds is None and status:
        row.seconds = status.get("seconds") or _elapsed(run_dir, row)
    return row


def _elapsed(run_dir: Path, row: RunRow) -> float | None:
    """Wall time so far (running) or until the last record (killed)."""
    start = datetime.fromisoformat(row.started).timestamp() if row.started else None
    log = run_dir / METRICS_LOG
    end = time.time() if row.status == "running" else log.stat().st_mtime if log.is_file() else None
    return round(end - start, 1) if start is not None and end is not None else None


def _greater_is_better(metric: str, rows: list[RunRow]) -> bool:
    """The direction of `metric`: a run that picked best/ by it knows; else the task
    schemas' metric tables (greater is better unless they say otherwise)."""
    for row in rows:
        if row.metric == metric:
            return row.greater_is_better
    known = {k: v for schema in TASK_SCHEMAS.values()
             for k, v in {**TaskConfig.METRICS, **schema.METRICS}.items()}
    return known.get(metric.split("/", 1)[-1], True)


def collect_runs(root: Path, task: str | None = None, sort: str | None = None) -> list[RunRow]:
    """The runs under `root`, newest first, or best first by `sort` (a metric in their
    metrics.json: `accuracy` means validation/accuracy), runs without it last."""
    rows = [load_run(d, str(d.relative_to(root)) if d != root else str(d))
            for d in find_run_dirs([root])]
    if task is not None:
        rows = [r for r in rows if r.task == task]
    rows.sort(key=lambda r: datetime.fromisoformat(r.started).timestamp() if r.started else 0.0,
              reverse=True)
    if sort is not None:
        key = sort if "/" in sort else f"validation/{sort}"
        known = {k for r in rows for k, v in r.metrics.items() if isinstance(v, (int, float))}
        if rows and key not in known:
            names = ", ".join(sorted(k for k in known if k.startswith("validation/"))) or "none"
            raise SftError(f"no run under {root} has the metric '{key}' (validation metrics "
                           f"found: {names}); pass one of them to --sort")
        sign = -1 if _greater_is_better(key, rows) else 1

        def rank(row: RunRow) -> tuple[bool, float]:
            value = row.metrics.get(key)
            usable = isinstance(value, (int, float)) and math.isfinite(value)
            return (not usable, sign * value if usable else 0.0)

        rows.sort(key=rank)  # stable: ties stay newest first
    return rows


def runs_table(rows: list[RunRow], title: str, sort: str | None = None) -> Table:
    heading = f"{title}: {len(rows)} runs, " + (f"best first by {sort}" if sort else "newest first")
    table = Table(title=heading, min_width=len(heading))
    for header in ("run", "task", "model", "overrides", "best", "steps", "time", "status",
                   "started"):
        table.add_column(header, no_wrap=header not in {"run", "overrides"},
                         justify="right" if header in {"steps", "time"} else "left")
    for row in rows:
        best = "-" if row.value is None else f"{(row.metric or '').split('/', 1)[-1]} {row.value:.4f}"
        overrides = " ".join(f"{k}={short_value(v)}" for k, v in row.overrides.items())
        started = (row.started or "-").replace("T", " ")[:16]  # to the minute, local time
        table.add_row(row.run_dir, row.task or "-", row.model or "-", overrides or "-", best,
                      "-" if row.steps is None else str(row.steps), _seconds(row.seconds),
                      f"[{_STYLE.get(row.status, 'white')}]{row.status}[/]", started)
    return table


def print_table(table: Table, console: Console) -> None:
    """Wide enough not to wrap the columns when printing into a file or pipe."""
    (console if console.is_terminal else Console(file=console.file, width=200)).print(table)


def report_run(run_dir: Path, out_dir: Path, console: Console) -> Path | None:
    """`sft report RUN_DIR`: the run's row and its curves.png (re)drawn into `out_dir`."""
    row = load_run(run_dir, str(run_dir))
    print_table(runs_table([row], "run"), console)
    if row.error:
        console.print(f"[red]failed[/red]: {escape(str(row.error))}", highlight=False, soft_wrap=True)
    if row.metric is None:
        raise SftError(f"{run_dir} has no config.yaml or metrics.json naming its metric; "
                       "is it a run dir?")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = plot_run(run_dir / METRICS_LOG, row.metric, out_dir / CURVES_FILE,
                    f"{run_dir.name} ({row.status})")
    console.print(f"wrote {path}" if path else f"nothing to draw yet: {run_dir / METRICS_LOG} "
                  "holds no records", highlight=False)
    return path


def is_run_dir(path: Path) -> bool:
    """A run dir itself, not a sweep or cv dir that holds run dirs."""
    return (path / METRICS_LOG).is_file() or (path / CONFIG_FILE).is_file()
