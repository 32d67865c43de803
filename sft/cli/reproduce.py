"""`sft reproduce RUN_DIR [overrides] [--atol X --rtol Y]`: re-run a finished run from its
config.yaml into a new run dir and compare every final metric (exit 0 match, 1 mismatch)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sft.cli.console import console
from sft.cli.train import train_command
from sft.config.compose import RUN_DIR_PRIMARY, check_run_dir, load_run, register_run_dir, value
from sft.config.compose import without as without_keys
from sft.errors import SftError
from sft.run import reproduce


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sft reproduce", description="re-run a finished run from its config.yaml and "
        "compare its final metrics (timings are not compared)")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. hardware=gpu")
    parser.add_argument("--atol", type=float, help="absolute tolerance (default: exact on "
                        f"CPU, {reproduce.ACCELERATOR[0]} otherwise)")
    parser.add_argument("--rtol", type=float, help="relative tolerance (default: exact on "
                        f"CPU, {reproduce.ACCELERATOR[1]} otherwise)")
    ns = parser.parse_intermixed_args(args)
    original = check_run_dir(ns.run_dir)
    before = reproduce.read_json(original / "metrics.json")
    if not before:
        raise SftError(f"{original} has no metrics.json: the run has not finished; continue it "
                       f"with `sft train resume={original}`")
    overrides = without_keys(ns.overrides, "run_dir", "resume")
    saved = load_run(original, overrides)
    for line in reproduce.environment_drift(reproduce.read_json(original / "env.json"), saved):
        console.print(f"[yellow]warning:[/yellow] differs from env.json: {line}", highlight=False)
    target = Path(value(ns.overrides, "run_dir")
                  or f"{original}-reproduce-{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    code = train_command([*register_run_dir(original, overrides), f"run_dir={target}"],
                         RUN_DIR_PRIMARY)
    if code:
        return code
    devices = [reproduce.read_json(d / "env.json").get("device", "") for d in (original, target)]
    default = reproduce.EXACT if all(d.startswith("cpu") for d in devices) else reproduce.ACCELERATOR
    atol = default[0] if ns.atol is None else ns.atol
    rtol = default[1] if ns.rtol is None else ns.rtol
    rows = reproduce.compare(before, reproduce.read_json(target / "metrics.json"), atol, rtol)
    rows.append(reproduce.compare_history(original, target, atol, rtol))
    console.print(reproduce.table(rows, f"{original} vs {target} (atol {atol:g}, rtol {rtol:g})"))
    failed = [r.key for r in rows if r.match is False]
    (target / "reproduction.json").write_text(json.dumps(
        {"original": str(original), "atol": atol, "rtol": rtol, "match": not failed,
         "mismatches": failed}, indent=2) + "\n")
    if failed:
        console.print(f"[red]mismatch[/red] in {len(failed)} of {len(rows)} checks: "
                      f"{', '.join(failed)}", highlight=False)
        return 1
    console.print(f"[green]reproduced[/green]: every result of {original} matches ({target})",
                  highlight=False)
    return 0
