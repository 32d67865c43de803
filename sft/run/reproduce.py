"""`sft reproduce RUN_DIR`: what may differ before re-running, and the comparison after.

The re-run itself is `sft train` from the run's config.yaml (see sft.config.compose); this module
lists environment drift against the run's env.json and compares final metrics and the
metrics.jsonl history, leaving out wall-clock timings (rundir.is_timing).
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from sft.config.schema import RunConfig
from sft.run.environment import pip_freeze
from sft.run.rundir import METRICS_LOG, is_timing
from sft.run.runner import fingerprints

EXACT = (0.0, 0.0)
ACCELERATOR = (1e-3, 1e-3)  # (atol, rtol) default when either run was not on the CPU


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def environment_drift(saved: dict[str, Any], run: RunConfig) -> list[str]:
    """One line per package version, python version, data file or model weight file that
    differs from the run's env.json."""
    lines = []
    if saved.get("python") and saved["python"] != platform.python_version():
        lines.append(f"python {saved['python']} -> {platform.python_version()}")
    before, now = _versions(saved.get("pip_freeze", [])), _versions(pip_freeze())
    for name in sorted(before.keys() | now.keys()):
        if before.get(name) != now.get(name):
            lines.append(f"package {name}: {before.get(name, 'not installed')} -> "
                         f"{now.get(name, 'not installed')}")
    data, model = fingerprints(run)
    for kind, old, new in (("data file", saved.get("data_files", {}), data),
                           ("model file", saved.get("model_files", {}), model)):
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                state = "missing now" if name not in new else (
                    "not recorded" if name not in old else "sha256 differs")
                lines.append(f"{kind} {name}: {state}")
    return lines


def _versions(freeze: list[str]) -> dict[str, str]:
    return dict(line.lower().split("==", 1) for line in freeze if "==" in line)


@dataclass
class Row:
    key: str
    original: Any
    reproduced: Any
    diff: float | None
    match: bool | None  # None: a timing, not compared


def _close(a: Any, b: Any, atol: float, rtol: float) -> tuple[float | None, bool]:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if not numeric:
        return None, a == b
    diff = float(b) - float(a)
    both_nan = math.isnan(a) and math.isnan(b)
    return diff, both_nan or abs(diff) <= atol + rtol * abs(float(a))


def compare(original: dict[str, Any], reproduced: dict[str, Any], atol: float,
            rtol: float) -> list[Row]:
    rows = []
    for key in sorted(original.keys() | reproduced.keys()):
        a, b = original.get(key), reproduced.get(key)
        if is_timing(key):
            rows.append(Row(key, a, b, None, None))
            continue
        diff, ok = _close(a, b, atol, rtol) if key in original and key in reproduced else (
            None, False)
        rows.append(Row(key, a, b, diff, ok))
    return rows


def compare_history(original: Path, reproduced: Path, atol: float, rtol: float) -> Row:
    """metrics.jsonl record by record (every logged loss, lr and evaluation)."""
    def records(run: Path) -> list[dict[str, Any]]:
        path = run / METRICS_LOG
        lines = path.read_text().splitlines() if path.is_file() else []
        return [{k: v for k, v in json.loads(x).items() if not is_timing(k)} for x in lines if x]

    a, b = records(original), records(reproduced)
    same = sum(1 for x, y in zip(a, b, strict=False)
               if x.keys() == y.keys() and all(_close(x[k], y[k], atol, rtol)[1] for k in x))
    ok = same == len(a) == len(b)
    return Row(f"{METRICS_LOG} (records)", len(a), len(b), None, ok)


def table(rows: list[Row], title: str) -> Table:
    out = Table(title=title)
    for name, justify in (("metric", "left"), ("original", "right"), ("reproduced", "right"),
                          ("diff", "right"), ("match", "center")):
        out.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        verdict = ("[dim]timing: skip[/dim]" if row.match is None
                   else "[green]match[/green]" if row.match else "[red]MISMATCH[/red]")
        out.add_row(row.key, _fmt(row.original), _fmt(row.reproduced),
                    "" if row.diff is None else f"{row.diff:+.3g}", verdict)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)
