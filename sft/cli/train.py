"""`sft train [overrides]`: Hydra composes (single run, --multirun sweep, Optuna search),
each job trains through sft.run.runner. Also the engine of `reproduce` and `cv`.

A sweep's jobs run in this process (Hydra's basic launcher) or, with
`hydra/launcher=slurm|submitit_local`, each in a process of its own that submitit starts
from a pickle of the launcher and our task function (TrainJob); either way every job writes
its run dir and job.json, and this process reports the sweep from those files."""

from __future__ import annotations

import logging
import logging.config
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

from sft.cli.console import console, error_message, quiet_progress_bars
from sft.config.compose import CONFIG_DIR, PRIMARY, RUN_DIR_PRIMARY, native_args, resume_args, value
from sft.config.resolvers import register, set_start_time
from sft.config.schema import RunConfig
from sft.config.validate import to_run_config
from sft.errors import ConfigError, SftError
from sft.parallel import world as worlds
from sft.parallel.launch import LauncherStopped, launch, share_cpu_threads
from sft.parallel.world import World
from sft.report.jobs import collect
from sft.report.summary import report
from sft.run.rundir import write_job_record
from sft.run.runner import train
from sft.train import checkpoint
from sft.train.interrupt import TrainingInterrupted

log = logging.getLogger("sft")

# Hydra plugins that an extra of ours installs: the config Hydra cannot find -> (package, extra)
PLUGIN_EXTRAS = {"hydra/sweeper/optuna": ("hydra-optuna-sweeper", "optuna"),
                 "hydra/launcher/submitit_": ("hydra-submitit-launcher", "slurm")}


MODE_FLAGS = ("--multirun", "-m")


def run(args: list[str]) -> int:
    return train_command(args)


def train_command(args: list[str], config_name: str = PRIMARY, title: str = "sweep") -> int:
    """`config_name`: train.yaml, or a run dir's config registered by sft.config.compose."""
    world = worlds.setup()
    started = worlds.shared_start_time(world)
    set_start_time(started)
    register()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach main(), which prints one line
    target = value(args, "resume")
    if target and config_name == PRIMARY:
        args, config_name = resume_args(args, target), RUN_DIR_PRIMARY
    quiet = [] if world.is_main else [  # only rank 0 writes .hydra/ and train.log
        "hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]",
        "hydra.job_logging.root.level=WARNING"]
    args = native_args(args)
    # Hydra's argparse takes no flag after an override (`sft train task=qa --multirun lr=...`)
    flags = [a for a in args if a in MODE_FLAGS]
    sys.argv = ["sft train", *flags, *[a for a in args if a not in MODE_FLAGS],
                *[q for q in quiet if q not in args], SweepStart.OVERRIDE]
    jobs = Jobs(world)
    SweepStart.last = None
    try:
        hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(
            TrainJob(jobs, started))()
    except TrainingInterrupted as stop:  # checkpoint saved; a sweep stops here too
        worlds.teardown(world)
        if world.is_main:
            console.print(f"[yellow]{escape(str(stop))}[/yellow]", highlight=False, soft_wrap=True)
        return stop.exit_code
    except MissingConfigException as err:
        plugin = next((p for option, p in PLUGIN_EXTRAS.items()
                       if (err.missing_cfg_file or "").startswith(option)), None)
        if plugin is None:
            raise
        raise ConfigError(f"{err.missing_cfg_file} needs {plugin[0]}, which is not installed; "
                          f"run pip install 'sft[{plugin[1]}]'") from err
    except ValueError as err:  # Optuna has no best trial when every trial failed
        if not (SweepStart.last and jobs.all_failed(Path(SweepStart.last))):
            raise
        log.error("%s", err)
    except RuntimeError as err:  # submitit: sbatch refused the jobs, or a job's process died
        if not (SweepStart.last and type(err).__module__.startswith("submitit.")):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        said = f"{first} (logs: {SweepStart.last}/.submitit/)"
        if not collect([Path(SweepStart.last)]):
            raise ConfigError(f"no sweep job started: {said}") from err
        log.error("a sweep job died: %s", said)
    worlds.teardown(world)
    if not SweepStart.last:
        if jobs.failed:
            raise jobs.failed[0][1]
        return 0
    if not world.is_main:  # rank 0 reports
        return min(len(jobs.failed), 125)
    if not jobs.count:  # a launcher ran the jobs in other processes: count their run dirs
        return end_of_sweep(Path(SweepStart.last), title=title)
    return end_of_sweep(Path(SweepStart.last), len(jobs.failed), jobs.count, title)


def end_of_sweep(sweep_dir: Path, failed: int | None = None, jobs: int | None = None,
                 title: str = "sweep") -> int:
    """Summary table, files and plots; the exit status is the number of failed jobs (without
    counts, the jobs whose run dir does not say complete)."""
    summary = report([sweep_dir], sweep_dir, console, title=f"{title} {sweep_dir}")
    if failed is None or jobs is None:
        failed = sum(job.status != "complete" for job in summary.jobs)
        jobs = len(summary.jobs)
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
    count: int = 0  # jobs started so far in this process (none when a launcher runs them elsewhere)

    def all_failed(self, sweep_dir: Path) -> bool:
        if self.count:
            return len(self.failed) == self.count
        return not any(job.status == "complete" for job in collect([sweep_dir]))


class SweepStart(Callback):
    """Hydra callback that notes where a multirun writes, in this process: the sweep dir is
    known here even when a launcher runs every job in another process."""

    OVERRIDE = f"++hydra.callbacks.sft_sweep._target_={__module__}.SweepStart"
    last: str | None = None  # the sweep dir of this process's latest multirun

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepStart.last = str(config.hydra.sweep.dir)


@dataclass
class TrainJob:
    """The Hydra task function. A launcher such as submitit pickles it and calls it in another
    process (a Slurm job): there, unpickling registers our resolvers and sets the sweep's start
    time, so `${started:...}` names the same dirs as here, before Hydra composes the job."""

    jobs: Jobs
    started: datetime

    def __call__(self, cfg: DictConfig) -> float | None:
        if os.environ.get("SUBMITIT_EXECUTOR"):
            _one_task_per_job()
        return _train_job(cfg, self.jobs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        set_start_time(self.started)
        register()


def _one_task_per_job() -> None:
    """Several submitit tasks would each train the same job into the same run dir."""
    import submitit  # present: it started this process

    tasks = submitit.JobEnvironment().num_tasks
    if tasks > 1:
        raise ConfigError(f"a sweep job runs as one process, not {tasks} tasks; set "
                          "hydra.launcher.tasks_per_node=1 and hydra.launcher.nodes=1")


def _train_job(cfg: DictConfig, jobs: Jobs) -> float | None:
    """One Hydra job: validate, train, return the best metric (what Optuna optimizes)."""
    quiet_progress_bars()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    jobs.count += 1
    start = time.perf_counter()

    def record(error: str | None = None) -> None:
        if jobs.world.is_main:  # rank 0 writes the run dir
            write_job_record(run_dir, overrides, time.perf_counter() - start, error)

    try:
        run = replace(to_run_config(cfg), run_dir=str(run_dir))
        nproc = processes(run)
        if nproc > 1 and not worlds.launched():
            job_logging = OmegaConf.to_container(hydra_cfg.job_logging, resolve=True)
            metrics = _launch_workers(run, overrides, nproc, job_logging)
        else:
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


def processes(run: RunConfig) -> int:
    """How many processes `parallel` asks for; null: one per visible GPU (1 on CPU)."""
    if run.parallel.strategy == "none":
        return 1
    return run.parallel.nproc_per_node or max(1, torch.cuda.device_count())


def _launch_workers(run: RunConfig, overrides: list[str], nproc: int,
                    job_logging: Any) -> dict[str, Any]:
    """Train `run` in `nproc` processes of this machine started by torch's elastic launcher;
    rank 0's metrics. A stop (a signal to this process, or to the workers) ends as in one
    process: every rank saves the same step, TrainingInterrupted, exit 128 + signal."""
    run_dir = Path(run.run_dir)
    log.info("starting %d processes (parallel=%s) through torch's elastic launcher", nproc,
             run.parallel.strategy)
    try:
        results = launch(_worker, (run, overrides, job_logging), nproc,
                         run.parallel.shutdown_timeout_s, f"resume with: sft train resume={run_dir}")
    except LauncherStopped as stop:  # the workers got the signal and saved (or were killed)
        saved = checkpoint.latest_valid(run_dir / checkpoint.CHECKPOINTS)
        raise TrainingInterrupted(stop.signum, checkpoint.step_of(saved) if saved else 0,
                                  run_dir, saved is not None) from None
    for result in results:
        if isinstance(result, TrainingInterrupted):
            raise result
    return results[0]


def _worker(run: RunConfig, overrides: list[str], job_logging: Any) -> Any:
    """One process of `_launch_workers`: joins the process group and trains. Rank 0 logs as
    the Hydra job does (console and train.log), the others only warnings."""
    world = worlds.setup()
    if world.is_main:
        logging.config.dictConfig(job_logging)
    else:
        logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    quiet_progress_bars()
    share_cpu_threads()
    try:
        metrics = train(run, overrides, console, world)
    except TrainingInterrupted as stop:  # every rank stopped at the same step and saved
        result: Any = stop
    else:
        result = metrics
    worlds.teardown(world)
    return result


def _remove_if_untouched(run_dir: Path) -> None:
    """A user error before training wrote anything: leave no half-made run dir behind."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir)
