"""`sft` command line: one module per verb, imported only when that verb runs (so
`sft --help` and a mistyped command answer without loading torch).

User errors (bad config, missing files, bad data) print one line and exit with status 2;
SFT_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

USAGE = """usage: sft <command> [args]

commands:
  train [overrides]            fine-tune: sft train task=sentiment model=minilm optimizer.lr=3e-5
                               (Hydra: --multirun, --cfg job, --help for every group and key)
                               resume=RUN_DIR|latest continues a run from its newest checkpoint
  reproduce RUN_DIR [overrides] [--atol X --rtol Y]
                               re-run a finished run from its config.yaml into a new run dir and
                               compare every final metric (exit 0 match, 1 mismatch)
  eval RUN_DIR [split=NAME] [overrides]
                               evaluate a run's best/ model on a split (default validation)
  predict RUN_DIR --input F --output F
                               predict jsonl/csv records, write jsonl with label and scores
  generate RUN_DIR --prompt TEXT | --input F --output F [--max-new-tokens N]
                               text from a generative run's best/ (chat template applied)
  export RUN_DIR [--merge] [--output DIR] [--dtype bf16|fp32]
                               best/ as a folder transformers loads; --merge folds an adapter
                               into its base; the reloaded export's logits are checked
  report DIR|RUN_DIR... [--output DIR]
                               rank a sweep's jobs; write summary.csv/json and plots
  cv [folds=5] [overrides]     k-fold cross-validation over train+validation, mean ± std
"""

COMMANDS = ("train", "eval", "predict", "generate", "export", "reproduce", "report", "cv")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'; choose one of: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    # the verb's module is imported only now, so `sft --help` answers without loading torch
    from sft.cli.console import console, describe, is_user_error  # loads hydra: not for --help

    try:
        return importlib.import_module(f"sft.cli.{command}").run(rest) or 0
    except Exception as err:  # one line for anything the user can fix
        if os.environ.get("SFT_DEBUG") == "1" or not is_user_error(err):
            raise
        console.print(f"[red]error:[/red] {describe(err)}", highlight=False, soft_wrap=True)
        return 2
