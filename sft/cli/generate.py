"""`sft generate RUN_DIR --prompt TEXT` or `--input F.jsonl --output F.jsonl`: text from a
generative run's best/ model, through the chat template it was trained with."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from sft.cli.console import console, quiet_progress_bars
from sft.cli.predict import read_records, write_records
from sft.errors import ConfigError, SftError
from sft.run.runner import load_finished


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sft generate", description="generate with best/")
    parser.add_argument("run_dir")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one user message")
    source.add_argument("--input", type=Path,
                        help="jsonl/csv records: instruction (+input), messages, or prompt")
    parser.add_argument("--output", type=Path, help="jsonl: each record plus its generation")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="> 0 samples (default: greedy)")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--batch-size", type=int, default=8)
    ns = parser.parse_args(args)
    if ns.input is not None and ns.output is None:
        raise SftError("--input needs --output F.jsonl (where the generations go)")
    records = [{"prompt": ns.prompt}] if ns.prompt is not None else read_records(ns.input)
    if not records:
        raise SftError(f"{ns.input} holds no records")
    quiet_progress_bars()  # one error or result line, no loading bars
    run_config, prepared, model = load_finished(ns.run_dir)
    task = prepared.task
    if not hasattr(task.config, "generation"):
        raise ConfigError(f"{ns.run_dir} is a {run_config.task.type} run; sft generate takes "
                          "generative runs (task=instruction, ...); use sft predict")
    generation = task.config.generation
    sampled = ns.temperature is not None or ns.top_p is not None
    generation = replace(generation, max_new_tokens=ns.max_new_tokens or generation.max_new_tokens,
                         do_sample=sampled or generation.do_sample,
                         temperature=ns.temperature or generation.temperature,
                         top_p=ns.top_p or generation.top_p)
    generation.validate()
    results = task.predict(model, records, ns.batch_size, generation)
    if ns.output is None:
        print(results[0]["generation"])  # stdout, so it pipes; the log goes to stderr
        return 0
    write_records(ns.output, records, results)
    console.print(f"wrote {len(results)} generations to {ns.output}")
    return 0
