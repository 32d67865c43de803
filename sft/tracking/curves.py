"""curves.png of one run: train loss, learning rate and the validation metric against step,
read back from metrics.jsonl. CurvesSink draws it when a run ends (complete, failed or
interrupted, so a diverged run shows where it went wrong); `sft report RUN_DIR` redraws it for
older runs, and the sweep plots (sft.report.plots) read their curves with the same reader."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("sft")

CURVES_FILE = "curves.png"


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the headless Agg backend (servers have no display); imported on
    first use, so a run pays for matplotlib only when it plots."""
    import matplotlib

    matplotlib.use("Agg")  # must precede importing pyplot
    import matplotlib.pyplot as plt

    return plt


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a half-written last line (a killed run) is skipped."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def curve(records: list[dict[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    """Steps and values of `key` (a bare name: `accuracy`, not `validation/accuracy`) in the
    records of one split."""
    steps, values = [], []
    for row in records:
        value = row.get(key)
        if row.get("split") == split and isinstance(value, (int, float)) and "step" in row:
            steps.append(row["step"])
            values.append(float(value))
    return steps, values


def plot_run(metrics_log: Path, metric: str, path: Path, title: str | None = None) -> Path | None:
    """Three panels against step (train loss, learning rate, validation `metric`) into `path`;
    None when the log holds no record to draw yet."""
    records = read_records(metrics_log)
    key = metric.split("/", 1)[-1]
    panels = [("train loss", curve(records, "train", "loss")),
              ("learning rate", curve(records, "train", "lr")),
              (f"validation {key}", curve(records, "validation", key))]
    if not any(steps for _, (steps, _) in panels):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (name, (steps, values)) in zip(axes, panels, strict=True):
        bad = [s for s, v in zip(steps, values, strict=True) if not math.isfinite(v)]
        if bad:  # a diverged run: say where, since matplotlib leaves nan/inf out silently
            name += f" (not finite from step {bad[0]})"
        if steps:
            ax.plot(steps, values, marker="o", markersize=3)
        else:
            ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class CurvesSink:
    """Draws curves.png from the run's metrics.jsonl when the run ends (the file, not the
    records logged here: a resumed run logged its earlier steps in another process)."""

    def __init__(self, metrics_log: Path, path: Path, metric: str, enabled: bool = True) -> None:
        self.metrics_log, self.path, self.metric, self.enabled = metrics_log, path, metric, enabled

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self, status: str) -> None:
        if not self.enabled:
            return
        try:
            plot_run(self.metrics_log, self.metric, self.path, f"{self.path.parent.name} ({status})")
        except Exception as err:  # a plot is never worth failing (or hiding) the run's outcome
            log.warning("could not draw %s: %s", self.path, err)
