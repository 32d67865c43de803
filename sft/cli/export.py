"""`sft export RUN_DIR [--merge] [--output DIR] [--dtype bf16|fp32] [overrides]`: the run's
best model as a folder plain transformers (or peft) loads, checked after a reload."""

from __future__ import annotations

import argparse
from pathlib import Path

from sft.cli.console import console, quiet_progress_bars
from sft.run.export import DTYPES, export


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sft export", description="export a run's best model")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--merge", action="store_true",
                        help="merge an adapter into its base (default for full runs)")
    parser.add_argument("--output", type=Path, help="a new folder (default: RUN_DIR/export)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.cache_dir=...")
    ns = parser.parse_intermixed_args(args)
    quiet_progress_bars()
    folder, what = export(ns.run_dir, ns.output, ns.merge, ns.dtype, ns.overrides)
    console.print(f"wrote {what} to {folder}", highlight=False, soft_wrap=True)
    return 0
