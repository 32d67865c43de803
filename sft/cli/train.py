"""`sft train [overrides]`: Hydra composes (single run, --multirun sweep, Optuna search),
each job trains through sft.run.runner. Also the engine of `reproduce` and `cv`."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sft.cli.console import console, error_message, quiet_progress_bars
from sft.config.compose import CONFIG_DIR, PRIMARY, RUN_DIR_PRIMARY, native_args, resume_args, value
from sft.config.resolvers import register, set_start_time
from sft.config.validate import to_run_config
from sft.errors import SftError
from sft.parallel import world as worlds
from sft.parallel.world import World
from sft.report.summary import report
from sft.run.rundir import write_job_record
from sft.run.runner import train
from sft.train.interrupt import TrainingInterrupted

log = logging.getLogger("sft")


def run(args: list[str]) -> int:
    return train_command(args)


def train_command(args: list[str], config_name: str = PRIMARY, title: str = "sweep") -> int:
    """`config_name`: train.yaml, or a run dir's config registered by sft.config.compose."""
    world = worlds.setup()
    set_start_time(worlds.shared_start_time(world))
    register()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach main(), which prints one line
    target = value(args, "resume")
    if target and config_name == PRIMARY:
        args, config_name = resume_args(args, target), RUN_DIR_PRIMARY
    quiet = [] if world.is_main else [  # only rank 0 writes .hydra/ and train.log
        "hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]",
        "hydra.job_logging.root.level=WARNING"]
    sys.argv = ["sft train", *native_args(args), *[q for q in quiet if q not in args]]
    jobs = Jobs(world)

    def job(cfg: DictConfig) -> float | None:
        return _train_job(cfg, jobs)

    try:
        hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(
            job)()
    except TrainingInterrupted as stop:  # checkpoint saved; a sweep stops here too
        worlds.teardown(world)
        if world.is_main:
            console.print(f"[yellow]{stop}[/yellow]", highlight=False, soft_wrap=True)
        return stop.exit_code
    except ValueError as err:  # Optuna has no best trial when every trial failed
        if not (jobs.sweep_dir and len(jobs.failed) == jobs.count):
            raise
        log.error("%s", err)
    worlds.teardown(world)
    if not jobs.sweep_dir:
        if jobs.failed:
            raise jobs.failed[0][1]
        return 0
    if not world.is_main:  # rank 0 reports
        return min(len(jobs.failed), 125)
    return end_of_sweep(Path(jobs.sweep_dir), len(jobs.failed), jobs.count, title)


def end_of_sweep(sweep_dir: Path, failed: int, jobs: int, title: str = "sweep") -> int:
    """Summary table, files and plots; the exit status is the number of failed jobs."""
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


def _train_job(cfg: DictConfig, jobs: Jobs) -> float | None:
    """One Hydra job: validate, train, return the best metric (what Optuna optimizes)."""
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
        run = replace(to_run_config(cfg), run_dir=str(run_dir))
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
