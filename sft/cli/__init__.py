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
                               (one RUN_DIR: its row and curves.png)
  runs [DIR] [--task T] [--sort METRIC] [--json]
                               past runs under DIR (default runs/), newest first: overrides,
                               best metric, steps, time, status (complete/failed/interrupted)
  cv [folds=5] [overrides]     k-fold cross-validation over train+validation, mean ± std
"""

MORE_HELP = """main keys (`sft train --help` lists every key with its value; `sft <command> --help`):
  optimizer.lr  trainer.epochs  trainer.max_steps (0: evaluate the model as loaded, no training)
  trainer.batch_size  trainer.grad_accum  trainer.eval_steps  trainer.metric  data.dir
  data.max_train_samples  data.max_length  model.name_or_path  hardware.device
  hardware.precision  seed  run_dir  resume

shell completion (bash; zsh after `autoload -U bashcompinit && bashcompinit`):
  eval "$(sft -sc install=bash)"     (add it to ~/.bashrc to keep it)"""

COMMANDS = ("train", "eval", "predict", "generate", "export", "reproduce", "report", "cv",
            "runs")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        from sft.config.compose import groups_help  # hydra, not torch

        print(f"{USAGE}\n{groups_help()}\n\n{MORE_HELP}")
        return 0
    if argv[0] in {"-sc", "--shell-completion"}:
        from sft.cli.console import shell_completion

        return shell_completion(argv[1:], COMMANDS)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from sft.config.validate import nearest

        print(f"error: unknown command '{command}'{nearest(command, COMMANDS)} (commands: "
              f"{', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    # the verb's module is imported only now, so `sft --help` answers without loading torch
    from rich.markup import escape

    from sft.cli.console import console, describe, is_user_error  # loads hydra: not for --help

    try:
        if command == "train" and {"-h", "--help"} & set(rest):  # ours, not Hydra's
            from sft.config.compose import train_help

            print(train_help(rest))
            return 0
        return importlib.import_module(f"sft.cli.{command}").run(rest) or 0
    except Exception as err:  # one line for anything the user can fix
        if os.environ.get("SFT_DEBUG") == "1" or not is_user_error(err):
            raise
        console.print(f"[red]error:[/red] {escape(describe(err))}", highlight=False, soft_wrap=True)
        return getattr(err, "exit_code", 2)
