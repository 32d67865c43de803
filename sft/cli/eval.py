"""`sft eval RUN_DIR [split=NAME] [overrides]`: evaluate a run's best/ model on a split."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from sft.cli.console import console, quiet_progress_bars
from sft.config.compose import value, without
from sft.parallel.device import autocast_dtype
from sft.run.runner import load_finished
from sft.train.evaluation import evaluate


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sft eval", description="evaluate a run's best model")
    parser.add_argument("run_dir")
    parser.add_argument("overrides", nargs="*", help="split=NAME and config overrides")
    ns = parser.parse_args(args)
    split = value(ns.overrides, "split") or "validation"
    quiet_progress_bars()  # one error or result line, no loading bars
    config, prepared, model = load_finished(ns.run_dir, without(ns.overrides, "split"), (split,))
    metrics = evaluate(prepared.task, model, prepared.features[split], config,
                       autocast_dtype(config.hardware, model.device))
    table = Table(title=f"{ns.run_dir} · {split}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, number in metrics.items():
        table.add_row(key, f"{number:.4f}")
    console.print(table)
    print(json.dumps({f"{split}/{k}": v for k, v in metrics.items()}))
    return 0
