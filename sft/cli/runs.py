"""`sft runs [DIR] [--task T] [--sort METRIC] [--json]`: the runs under DIR (default runs/),
newest first: task, model, overrides, best metric, steps, wall time and status."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from sft.errors import SftError
from sft.report.runs import collect_runs, print_table, runs_table


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sft runs", description="list past runs, newest first")
    parser.add_argument("dir", nargs="?", type=Path, default=Path("runs"),
                        help="the folder holding run dirs (default runs/; multiruns/ or cv/ "
                             "for sweeps)")
    parser.add_argument("--task", help="only the runs of this task (task.name)")
    parser.add_argument("--sort", metavar="METRIC",
                        help="best first by this metric of metrics.json (accuracy means "
                             "validation/accuracy)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    ns = parser.parse_args(args)
    if not ns.dir.is_dir():
        raise SftError(f"no folder {ns.dir}; pass the folder your runs are in: sft runs DIR "
                       "(runs/ by default)")
    rows = collect_runs(ns.dir, ns.task, ns.sort)
    if ns.json:
        print(json.dumps([{k: v for k, v in asdict(r).items() if k != "metrics"} for r in rows],
                         indent=2))
        return 0
    console = Console()
    if not rows:
        console.print(f"no runs under {ns.dir}" + (f" for task {ns.task}" if ns.task else ""),
                      highlight=False)
        return 0
    print_table(runs_table(rows, str(ns.dir), ns.sort), console)
    return 0
