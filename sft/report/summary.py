"""Sweep reports: a ranked rich table, mean ± std over seeds or folds, summary.csv /
summary.json and plots. The same code serves the end of `sft train --multirun`, the end of
`sft cv` and `sft report DIR...`; a failed job is as visible as a finished one."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sft.errors import SftError
from sft.report.jobs import REPLICATE_KEYS, Job, Summary, collect
from sft.report.plots import plot_curves, plot_hyperparameters


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def summarize(jobs: list[Job]) -> Summary:
    done = [j for j in jobs if j.status == "complete"]
    metrics = [j.metric for j in done if j.metric]
    metric = max(set(metrics), key=metrics.count) if metrics else "validation metric"
    greater = next((j.greater_is_better for j in done), True)
    keys = sorted({k for j in jobs for k in j.params})
    swept = [k for k in keys if len({j.params.get(k) for j in jobs}) > 1]
    fixed = {k: jobs[0].params[k] for k in keys if k not in swept}

    def rank(job: Job) -> tuple:
        if job.value is None or job.status != "complete":
            return (1, 0.0, job.name)
        return (0, -job.value if greater else job.value, job.name)

    jobs = sorted(jobs, key=rank)
    summary = Summary(jobs, metric, greater, swept, fixed, [])
    if any(k in REPLICATE_KEYS for k in swept):
        summary.groups = _groups(summary)
    return summary


def _groups(summary: Summary) -> list[dict[str, Any]]:
    """Mean ± std of the best metric over seeds/folds, per setting of the other swept keys."""
    by_setting: dict[tuple, list[Job]] = {}
    for job in summary.jobs:
        setting = tuple(job.params.get(k, "") for k in summary.hyperparameters)
        by_setting.setdefault(setting, []).append(job)
    groups = []
    for setting, members in by_setting.items():
        values = [j.value for j in members if j.status == "complete" and j.value is not None]
        groups.append({
            "params": dict(zip(summary.hyperparameters, setting, strict=True)),
            "n": len(values), "failed": sum(j.status == "failed" for j in members),
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None,
        })
    sign = -1 if summary.greater_is_better else 1
    groups.sort(key=lambda g: (g["mean"] is None, sign * (g["mean"] or 0.0)))
    return groups


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)}m{seconds:04.1f}s" if minutes else f"{seconds:.1f}s"


def short_value(value: str) -> str:
    """Optuna's 3.574712922600245e-05 as 3.57e-05; anything else unchanged."""
    number = _number(value)
    if number is None or value.lstrip("-").isdigit() or len(value) <= 7:
        return value
    return f"{number:.3g}"


def short_keys(keys: list[str]) -> list[str]:
    """optimizer.lr -> lr in table headers, unless two keys would share a name."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)]


_STATUS_STYLE = {"complete": "green", "failed": "red", "incomplete": "yellow"}


def tables(summary: Summary, title: str) -> list[Table]:
    """The ranked job table and, when seeds or folds vary, the mean ± std table."""
    caption = " ".join(f"{k}={v}" for k, v in summary.fixed.items()) or None
    heading = f"{title}: {len(summary.jobs)} jobs, ranked by {summary.metric}"
    jobs = Table(title=heading, caption=caption, min_width=len(heading))  # titles never wrap
    jobs.add_column("job")
    for key in short_keys(summary.swept):
        jobs.add_column(key, justify="right")
    metric = summary.metric.rsplit("/", 1)[-1]
    for header in (metric, "step", "time", "status"):
        jobs.add_column(header, justify="left" if header == "status" else "right", no_wrap=True)
    for job in summary.jobs:
        value = "-" if job.value is None else f"{job.value:.4f}"
        status = f"[{_STATUS_STYLE.get(job.status, 'white')}]{job.status}[/]"
        jobs.add_row(job.name, *(short_value(job.params.get(k, "")) for k in summary.swept), value,
                     "-" if job.step is None else str(job.step), _seconds(job.seconds), status)
    result = [jobs]
    if summary.groups:
        over = "/".join(short_keys([k for k in REPLICATE_KEYS if k in summary.swept]))
        heading = f"{summary.metric}: mean ± std over {over}"
        groups = Table(title=heading, min_width=len(heading))
        for key in short_keys(summary.hyperparameters):
            groups.add_column(key, justify="right")
        for header in ("n", f"{metric} mean ± std", "failed"):
            groups.add_column(header, justify="right", no_wrap=True)
        for group in summary.groups:
            stat = "-" if group["mean"] is None else f"{group['mean']:.4f} ± {group['std']:.4f}"
            groups.add_row(*map(short_value, group["params"].values()), str(group["n"]), stat,
                           str(group["failed"]))
        result.append(groups)
    return result


def write_summary(summary: Summary, out_dir: Path) -> list[Path]:
    """summary.json, summary.csv and the plots; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"metric": summary.metric, "greater_is_better": summary.greater_is_better,
            "swept": summary.swept, "fixed": summary.fixed, "failed": len(summary.failed),
            "jobs": [asdict(j) for j in summary.jobs], "groups": summary.groups}
    written = [out_dir / "summary.json", out_dir / "summary.csv"]
    written[0].write_text(json.dumps(data, indent=2) + "\n")
    with open(written[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", *summary.swept, "status", summary.metric, "best_step",
                         "seconds", "error", "run_dir"])
        for j in summary.jobs:
            writer.writerow([j.name, *(j.params.get(k, "") for k in summary.swept), j.status,
                             j.value, j.step, j.seconds, j.error or "", j.run_dir])
    for path in (plot_curves(summary, out_dir / "curves.png"),
                 plot_hyperparameters(summary, out_dir / "hparams.png")):
        if path is not None:
            written.append(path)
    return written


def report(paths: list[Path], out_dir: Path, console: Console, title: str = "sweep") -> Summary:
    """Collect the jobs under `paths`, print the tables and errors, write the summary files."""
    jobs = collect(paths)
    if not jobs:
        raise SftError(f"no run dirs found under {', '.join(map(str, paths))}; pass a sweep "
                       "dir (multiruns/<timestamp>), a cv dir or run dirs")
    summary = summarize(jobs)
    wide = console if console.is_terminal else Console(file=console.file, width=160)
    for table in tables(summary, title):
        wide.print(table)
    for job in summary.failed:
        console.print(f"[red]failed[/red] {job.name}: {escape(str(job.error))}", highlight=False,
                      soft_wrap=True)
    written = write_summary(summary, out_dir)
    console.print(f"wrote {', '.join(p.name for p in written)} to {out_dir}", highlight=False)
    return summary
