"""`sft predict RUN_DIR --input F --output F`: the best model's predictions for jsonl/csv
records, written as jsonl (each input record plus the task's prediction)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from sft.cli.console import console, quiet_progress_bars
from sft.data.loading import unreadable
from sft.errors import DataError, SftError
from sft.files import write_text_atomic
from sft.run.runner import load_finished


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SftError(f"input file not found: {path}")
    try:
        return _read(path)
    except UnicodeDecodeError as err:
        raise DataError(unreadable(path, err)) from err


def _read(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() in {".csv", ".tsv"}:
        with open(path, newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise SftError(f"{path}:{number}: not valid JSON ({err.msg})") from err
    return records


def task_inputs(records: list[dict[str, Any]], config: Any, path: Path) -> list[dict[str, Any]]:
    """The records as the task reads them: its own text column (sentiment: `sentence`) may be
    given as `text`, as most tools name it; token classification reads `text` and takes a
    `tokens` list (task.tokens_column) joined by spaces instead."""
    column = getattr(config, "text_column", None)
    tokens = getattr(config, "tokens_column", None)
    inputs = []
    for number, record in enumerate(records, 1):
        if column and column not in record and "text" in record:
            record = {**record, column: record["text"]}
        elif tokens and "text" not in record and isinstance(record.get(tokens), list):
            record = {**record, "text": " ".join(map(str, record[tokens]))}
        if column and column not in record:
            raise DataError(f"{path}: record {number} has no '{column}' field (nor 'text'); "
                            f"give each record its text as '{column}' or 'text'")
        inputs.append(record)
    return inputs


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
    inputs = task_inputs(records, prepared.task.config, ns.input)
    predictions = prepared.task.predict(model, inputs, ns.batch_size)
    write_records(ns.output, records, predictions)
    console.print(f"wrote {len(predictions)} predictions to {ns.output}")
    return 0


def write_records(path: Path, records: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    """jsonl: each input record with its result's fields added (written atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps({**record, **result}, ensure_ascii=False) + "\n"
                                    for record, result in zip(records, results, strict=True)))
