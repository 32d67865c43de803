"""`sft predict RUN_DIR --input F --output F`: the best model's predictions for jsonl/csv
records, written as jsonl (each input record plus the task's prediction)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from sft.cli.console import console, quiet_progress_bars
from sft.errors import SftError
from sft.files import write_text_atomic
from sft.run.runner import load_finished


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SftError(f"input file not found: {path}")
    if path.suffix.lower() in {".csv", ".tsv"}:
        with open(path, newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise SftError(f"{path}:{number}: not valid JSON ({err.msg})") from err
    return records


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sft predict", description="predict with best/")
    parser.add_argument("run_dir")
    parser.add_argument("--input", required=True, type=Path, help="jsonl or csv records")
    parser.add_argument("--output", required=True, type=Path, help="jsonl predictions")
    parser.add_argument("--batch-size", type=int, default=64)
    ns = parser.parse_args(args)
    records = read_records(ns.input)
    if not records:
        raise SftError(f"{ns.input} holds no records")
    quiet_progress_bars()  # one error or result line, no loading bars
    _, prepared, model = load_finished(ns.run_dir)
    predictions = prepared.task.predict(model, records, ns.batch_size)
    write_records(ns.output, records, predictions)
    console.print(f"wrote {len(predictions)} predictions to {ns.output}")
    return 0


def write_records(path: Path, records: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    """jsonl: each input record with its result's fields added (written atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps({**record, **result}, ensure_ascii=False) + "\n"
                                    for record, result in zip(records, results, strict=True)))
