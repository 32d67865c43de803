"""`sft report DIR|RUN_DIR... [--output DIR]`: rank the runs of a sweep, a cv or any set of
run dirs; write summary.csv/json and plots. One run dir alone: its row and curves.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from sft.errors import SftError
from sft.report.runs import is_run_dir, report_run
from sft.report.summary import report


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sft report", description="summarize sweep jobs")
    parser.add_argument("dirs", nargs="+", type=Path, help="a sweep or cv dir, or run dirs")
    parser.add_argument("--output", type=Path, default=None,
                        help="where summary.csv/json and plots go (default: the one dir "
                             "given, else the current dir)")
    ns = parser.parse_args(args)
    missing = [d for d in ns.dirs if not d.is_dir()]
    if missing:
        raise SftError(f"not a directory: {missing[0]}")
    output = ns.output or (ns.dirs[0] if len(ns.dirs) == 1 else Path.cwd())
    if len(ns.dirs) == 1 and is_run_dir(ns.dirs[0]):  # one run, not a sweep: its curves
        report_run(ns.dirs[0], output, Console())
        return 0
    report(ns.dirs, output, Console(), title=" ".join(map(str, ns.dirs)))
    return 0
