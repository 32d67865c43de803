"""`sft` command line: train (Hydra; resume=RUN_DIR|latest), reproduce, eval, predict,
report, cv.

User errors (bad config, missing files, bad data) print one line and exit with status 2;
SFT_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from sft.config import CONFIG_DIR, describe, register, set_start_time
from sft.errors import SftError

if TYPE_CHECKING:
    from sft.distributed import World

console = Console(stderr=True)
log = logging.getLogger("sft")

USAGE = """usage: sft <command> [args]

commands:
  train [overrides]            fine-tune: sft train task=sentiment model=minilm optimizer.lr=3e-5
                               (Hydra: --multirun, --cfg job, --help for every group and key)
                               resume=RUN_DIR|latest continues a run from its newest checkpoint
  reproduce RUN_DIR [overrides] [--atol X --rtol Y]
                               re-run a finished run from its config.yaml into a new run dir and
                               compare every final metric (exit 0 match, 1 mismatch)
  eval RUN_DIR [split=NAME]    evaluate a run's best/ model on a split (default validation)
  predict RUN_DIR --input F --output F
                               predict jsonl/csv records, write jsonl with label and scores
  report DIR|RUN_DIR... [--output DIR]
                               rank a sweep's jobs; write summary.csv/json and plots
  cv [folds=5] [overrides]     k-fold cross-validation over train+validation, mean ± std
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    commands = {"train": _train, "eval": _eval, "predict": _predict, "reproduce": _reproduce,
                "report": _report, "cv": _cv}
    if command not in commands:
        console.print(f"error: unknown command '{command}'; choose one of: {', '.join(commands)}",
                      soft_wrap=True)  # one line, however many commands
        return 2
    try:
        return commands[command](rest) or 0
    except Exception as err:  # one line for anything the user can fix
        if os.environ.get("SFT_DEBUG") == "1" or not _is_user_error(err):
            raise
        console.print(f"[red]error:[/red] {describe(err)}", highlight=False, soft_wrap=True)
        return 2


def _is_user_error(err: BaseException) -> bool:
    from hydra.errors import HydraException

    return isinstance(err, (SftError, HydraException, OmegaConfBaseException))


def error_message(err: BaseException) -> str:
    """One line for a failed job: the user-facing message, or the exception type and text."""
    return describe(err) if _is_user_error(err) else f"{type(err).__name__}: {err}"


# -- train ------------------------------------------------------------------------------
def _train(args: list[str], config_name: str = "train") -> int:
    """`config_name`: train.yaml, or rerun.PRIMARY (a run dir's config, see sft.rerun)."""
    import hydra

    from sft import distributed, rerun
    from sft.interrupt import TrainingInterrupted

    world = distributed.setup()
    set_start_time(distributed.shared_start_time(world))
    register()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach main(), which prints one line
    resume = rerun.find_arg(args, "resume")
    if resume and config_name == "train":
        args, config_name = rerun.resume_args(args, resume), rerun.PRIMARY
    quiet = [] if world.is_main else [  # only rank 0 writes .hydra/ and train.log
        "hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]",
        "hydra.job_logging.root.level=WARNING"]
    sys.argv = ["sft train", *rerun.native_args(args), *[q for q in quiet if q not in args]]
    jobs = Jobs(world)

    def job(cfg: DictConfig) -> float | None:
        return _train_job(cfg, jobs)

    try:
        hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(
            job)()
    except TrainingInterrupted as stop:  # checkpoint saved; a sweep stops here too
        distributed.teardown(world)
        if world.is_main:
            console.print(f"[yellow]{stop}[/yellow]", highlight=False, soft_wrap=True)
        return stop.exit_code
    except ValueError as err:  # Optuna has no best trial when every trial failed
        if not (jobs.sweep_dir and len(jobs.failed) == jobs.count):
            raise
        log.error("%s", err)
    distributed.teardown(world)
    if not jobs.sweep_dir:
        if jobs.failed:
            raise jobs.failed[0][1]
        return 0
    if not world.is_main:  # rank 0 reports
        return min(len(jobs.failed), 125)
    return end_of_sweep(Path(jobs.sweep_dir), len(jobs.failed), jobs.count)


def end_of_sweep(sweep_dir: Path, failed: int, jobs: int, title: str = "sweep") -> int:
    """Summary table, files and plots; the exit status is the number of failed jobs."""
    from sft.report import report

    report([sweep_dir], sweep_dir, console, title=f"{title} {sweep_dir}")
    if failed:
        console.print(f"[red]{failed} of {jobs} jobs failed[/red]", highlight=False)
    return min(failed, 125)


@dataclass
class Jobs:
    """What the Hydra jobs of one `sft train` share. A failing job is recorded in `failed`
    as (run dir, error), not raised through Hydra, so a sweep goes on and a single run still
    ends in one clean line from main()."""

    world: World
    failed: list[tuple[Path, BaseException]] = field(default_factory=list)
    sweep_dir: str | None = None  # multirun only
    count: int = 0  # jobs started so far


def quiet_progress_bars() -> None:
    """Library progress bars would interleave with ours (and flood sweep logs)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _train_job(cfg: DictConfig, jobs: Jobs) -> float | None:
    """One Hydra job: validate, train, return the best metric (what Optuna optimizes)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sft.config import to_run_config
    from sft.report import write_job_record
    from sft.runner import train

    quiet_progress_bars()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:
        jobs.sweep_dir = hydra_cfg.sweep.dir
    jobs.count += 1
    start = time.perf_counter()

    def record(error: str | None = None) -> None:
        if jobs.world.is_main:  # rank 0 writes the run dir
            write_job_record(run_dir, overrides, time.perf_counter() - start, error)

    try:
        run = to_run_config(cfg)
        run = replace(run, run_dir=str(run_dir))
        metrics = train(run, overrides, console, jobs.world)
    except Exception as err:
        if os.environ.get("SFT_DEBUG") == "1":
            raise
        message = error_message(err)
        if isinstance(err, SftError) and not multirun:
            _remove_if_untouched(run_dir)
        else:  # a sweep keeps the failed job's dir, so the report shows it with its error
            record(message)
        if multirun:  # say it now, not only at the end; a single run reports once, from main()
            log.error("job %s failed (%s): %s", hydra_cfg.job.num, " ".join(overrides), message)
        jobs.failed.append((run_dir, err))
        return None
    record()
    return metrics.get("best/value")


def _remove_if_untouched(run_dir: Path) -> None:
    """A user error before training wrote anything: leave no half-made run dir behind."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir)


# -- reproduce --------------------------------------------------------------------------
def _reproduce(args: list[str]) -> int:
    import time

    from sft import reproduce, rerun
    from sft.runner import load_run_config

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
    original = rerun.check_run_dir(ns.run_dir)
    before = reproduce.read_json(original / "metrics.json")
    if not before:
        raise SftError(f"{original} has no metrics.json: the run has not finished; continue it "
                       f"with `sft train resume={original}`")
    overrides = rerun.without(ns.overrides, "run_dir", "resume")
    run = load_run_config(original, rerun.value_overrides(overrides))
    for line in reproduce.environment_drift(reproduce.read_json(original / "env.json"), run):
        console.print(f"[yellow]warning:[/yellow] differs from env.json: {line}", highlight=False)
    target = Path(rerun.find_arg(ns.overrides, "run_dir")
                  or f"{original}-reproduce-{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    code = _train([*rerun.from_run_dir(original, overrides), f"run_dir={target}"], rerun.PRIMARY)
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


# -- report / cv ------------------------------------------------------------------------
def _report(args: list[str]) -> int:
    from sft.report import report

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
    report(ns.dirs, output, Console(), title=" ".join(map(str, ns.dirs)))
    return 0


def _cv(args: list[str]) -> int:
    from sft.cv import cross_validate

    cv_dir, failed, folds = cross_validate(args, console)
    return end_of_sweep(cv_dir, failed, folds, title=f"{folds}-fold cv")


# -- eval / predict ---------------------------------------------------------------------
def _parse_overrides(items: list[str]) -> tuple[str, list[str]]:
    split, overrides = "validation", []
    for item in items:
        if "=" not in item:
            raise SftError(f"unexpected argument '{item}'; use key=value (e.g. split=test)")
        key, value = item.split("=", 1)
        if key == "split":
            split = value
        else:
            overrides.append(item)
    return split, overrides


def _eval(args: list[str]) -> int:
    from sft.hardware import autocast_dtype
    from sft.runner import load_finished
    from sft.trainer import evaluate

    parser = argparse.ArgumentParser(prog="sft eval", description="evaluate a run's best model")
    parser.add_argument("run_dir")
    parser.add_argument("overrides", nargs="*", help="split=NAME and config overrides")
    ns = parser.parse_args(args)
    split, overrides = _parse_overrides(ns.overrides)
    run, prepared, model = load_finished(ns.run_dir, overrides, (split,))
    metrics = evaluate(prepared.task, model, prepared.features[split], run,
                       autocast_dtype(run.hardware, model.device))
    table = Table(title=f"{ns.run_dir} · {split}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    print(json.dumps({f"{split}/{k}": v for k, v in metrics.items()}))
    return 0


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


def _predict(args: list[str]) -> int:
    from sft.runner import load_finished

    parser = argparse.ArgumentParser(prog="sft predict", description="predict with best/")
    parser.add_argument("run_dir")
    parser.add_argument("--input", required=True, type=Path, help="jsonl or csv records")
    parser.add_argument("--output", required=True, type=Path, help="jsonl predictions")
    parser.add_argument("--batch-size", type=int, default=64)
    ns = parser.parse_args(args)
    records = read_records(ns.input)
    if not records:
        raise SftError(f"{ns.input} holds no records")
    run, prepared, model = load_finished(ns.run_dir)
    predictions = prepared.task.predict(model, records, ns.batch_size)
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = ns.output.with_name(f".{ns.output.name}.tmp")
    with open(tmp, "w") as f:
        for record, prediction in zip(records, predictions, strict=True):
            f.write(json.dumps({**record, **prediction}, ensure_ascii=False) + "\n")
    tmp.replace(ns.output)
    console.print(f"wrote {len(predictions)} predictions to {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
