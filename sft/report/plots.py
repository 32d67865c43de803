"""Sweep plots (matplotlib, headless): validation curves of every job and the best metric
against each swept hyperparameter."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.ticker import NullFormatter

from sft.report.jobs import Job, Summary
from sft.run.rundir import METRICS_LOG
from sft.tracking.curves import curve, pyplot, read_records

plt = pyplot()  # headless


def _label(job: Job, summary: Summary) -> str:
    params = " ".join(f"{k.rsplit('.', 1)[-1]}={job.params.get(k, '')}" for k in summary.swept)
    return f"{job.name} {params}".strip()


def _curve(job: Job, key: str) -> tuple[list[int], list[float]]:
    return curve(read_records(Path(job.run_dir) / METRICS_LOG), "validation", key)


def plot_curves(summary: Summary, path: Path) -> Path | None:
    """Validation metric against step, one line per job."""
    key = summary.metric.split("/", 1)[-1]
    curves = [(job, *_curve(job, key)) for job in summary.jobs]
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for job, steps, values in curves:
        ax.plot(steps, values, marker="o", markersize=3, label=_label(job, summary))
    ax.set_xlabel("step")
    ax.set_ylabel(summary.metric)
    ax.set_title(f"{summary.metric} during training")
    ax.grid(alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def plot_hyperparameters(summary: Summary, path: Path) -> Path | None:
    """Best metric of each finished job against each swept hyperparameter (one panel each);
    the line joins the mean per value, so seed noise is visible around it."""
    keys = summary.hyperparameters
    done = [j for j in summary.jobs if j.status == "complete" and j.value is not None]
    if not keys or not done:
        return None
    keys = keys[:12]  # a report over unrelated runs can differ in dozens of keys
    cols = min(len(keys), 4)
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys, strict=False):
        raw = [j.params.get(key, "") for j in done]
        xs = _numbers(raw)
        if xs is None:  # categorical: one slot per value, in first-seen order
            order = list(dict.fromkeys(raw))
            xs = [float(order.index(v)) for v in raw]
            ax.set_xticks(range(len(order)), order, rotation=30, fontsize=8)
        elif min(xs) > 0 and (key.endswith("lr") and max(xs) > min(xs) or max(xs) / min(xs) >= 100):
            ax.set_xscale("log")  # learning rates, and anything spanning decades
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ys = [j.value for j in done]
        ax.scatter(xs, ys, alpha=0.7)
        means = {x: sum(y for xx, y in zip(xs, ys, strict=True) if xx == x) / xs.count(x)
                 for x in sorted(set(xs))}
        if len(means) > 1 and len(means) < len(xs):
            ax.plot(list(means), list(means.values()), color="gray", linewidth=1)
        ax.set_xlabel(key)
        ax.set_ylabel(summary.metric)
        ax.grid(alpha=0.3)
        if all(math.isfinite(y) for y in ys) and len(set(ys)) == 1:
            ax.set_ylim(ys[0] - 0.05, ys[0] + 0.05)
    fig.suptitle(f"best {summary.metric} per job")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
