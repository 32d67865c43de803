"""Wire one run together: task, data, model, trainer, run directory."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from omegaconf import OmegaConf
from rich.console import Console
from rich.tree import Tree
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.config.compose import config_changes, load_run
from sft.config.schema import RunConfig
from sft.data.features import featurize
from sft.data.loading import load_splits, local_files
from sft.errors import ConfigError, SftError
from sft.files import sha256_file
from sft.models.adapters import adapter_folder, merge, parameter_counts
from sft.models.loading import load_tokenizer, weight_files
from sft.parallel.device import (
    apply_host,
    apply_threads,
    autocast_dtype,
    describe_device,
    resolve_device,
)
from sft.parallel.strategies import make_strategy
from sft.parallel.world import World
from sft.run.environment import environment
from sft.run.export import merge_best
from sft.run.model import adapted_model, build_model, saved_model
from sft.run.rundir import METRICS_LOG, RunDir
from sft.tasks import build_task
from sft.tasks.base import Task
from sft.tracking.sinks import Sinks
from sft.tracking.trackers import require, trackers
from sft.train import checkpoint
from sft.train.interrupt import TrainingInterrupted
from sft.train.seeding import seed_everything
from sft.train.trainer import Trainer

log = logging.getLogger("sft")

PREVIEW_FILE = "preview.txt"  # the first training records, trained tokens marked


@dataclass
class Prepared:
    task: Task
    tokenizer: PreTrainedTokenizerBase
    features: DatasetDict


def prepare(run: RunConfig, splits: tuple[str, ...] | None = None) -> Prepared:
    """Tokenizer, task plug-in and cached features of the requested splits (all if None,
    no data at all if empty)."""
    tokenizer = load_tokenizer(run.model)
    task = build_task(run.task, tokenizer, run.data, run.model)
    if splits == ():
        return Prepared(task, tokenizer, DatasetDict())
    raw = load_splits(task, run.data)
    if splits is not None:
        missing = [s for s in splits if s not in raw]
        if missing:
            raise SftError(f"split '{missing[0]}' does not exist for task '{run.task.name}' "
                           f"(splits: {', '.join(raw)})")
        raw = DatasetDict({s: raw[s] for s in splits})
    features = featurize(task, raw, run.data)
    return Prepared(task, tokenizer, features)


def fingerprints(run: RunConfig) -> tuple[dict[str, str], dict[str, str]]:
    """sha256 of the local data files (per split) and of the base model's weight files."""
    data = ({split: sha256_file(path) for split, path in local_files(run.task, run.data).items()}
            if run.data.dir else {})
    return data, {p.name: sha256_file(p) for p in weight_files(run.model)}


def train(run: RunConfig, overrides: list[str] | None = None, console: Console | None = None,
          world: World | None = None) -> dict[str, Any]:
    """Train `run` into run.run_dir and return the final metrics (also in metrics.json).
    With `run.resume` (the run dir itself), continue from its newest valid checkpoint."""
    world = world or World()
    run_dir = RunDir(run.run_dir, is_main=world.is_main)
    start = resume_point(run, run_dir)
    require(run.logger)  # a missing tracker package fails now, not after loading the model
    seed_everything(run.seed, run.trainer.deterministic)
    device = resolve_device(run.hardware, world.local_rank)
    apply_host(run.hardware, device)  # before the model and data allocate
    prepared = prepare(run)
    if run.trainer.batching not in prepared.task.batchings():
        raise ConfigError(f"trainer.batching={run.trainer.batching} does not fit task "
                          f"'{run.task.name}' on model '{run.model.name}'; use one of "
                          f"{', '.join(prepared.task.batchings())}")
    if run.model.quantization and device.type != "cuda":
        raise ConfigError("adapter=qlora loads the base in 4 bits with bitsandbytes, which needs "
                          "a CUDA GPU; on this machine use adapter=lora")
    model = build_model(run, prepared.task)
    trainable, total = parameter_counts(model)
    log.info("parameters: %s trainable of %s (%.2f%%)%s", f"{trainable:,}", f"{total:,}",
             100 * trainable / max(total, 1), "" if run.adapter.type == "none" else
             f" with a {run.adapter.type} adapter of rank {run.adapter.r}")
    if world.is_main:
        (console or Console(stderr=True)).print(config_tree(run))
    env = environment(run, describe_device(device), overrides or [],
                      *fingerprints(run))
    if run.resume:
        env = record_resume(run_dir, env, start)
    run_dir.write_config(replace(run, resume=None))
    run_dir.write_json("env.json", env)
    sizes = ", ".join(f"{s} {len(d)}" for s, d in prepared.features.items())
    log.info("run dir %s | %s (%s attention) on %s | %s", run_dir.path, run.model.name,
             model.config._attn_implementation, describe_device(device), sizes)
    preview = prepared.task.preview(prepared.features["train"])
    if preview is not None and world.is_main:  # what the loss is on, for a user to check
        (run_dir.path / PREVIEW_FILE).write_text(preview)
    replay_from = None if not run.resume else checkpoint.step_of(start) + 1 if start else 0
    # trackers last: curves.png exists when they upload it
    sinks = Sinks(run_dir.metrics_log(), run_dir.status_log(), run_dir.curves(run.metric),
                  *trackers(run, run_dir.path, run_dir.path / METRICS_LOG, replay_from,
                            world.is_main))
    try:  # from here on the sinks record how the run ends (status.json, curves.png)
        trainer = Trainer(run, prepared.task, model, prepared.tokenizer, prepared.features,
                          run_dir.path, sinks, make_strategy(world, device, run.parallel,
                                                      autocast_dtype(run.hardware, device)),
                          console)
        if start is not None:
            trainer.resume_from(start)
            log.info("resumed from %s (step %d of %d)", start, trainer.step, trainer.total_steps)
        elif run.resume:
            sinks.jsonl.truncate(0)
            trainer.samples.truncate(0)
        metrics = trainer.fit()
    except BaseException as err:
        sinks.close("interrupted" if isinstance(err, TrainingInterrupted) else "failed")
        raise
    sinks.close("complete")
    metrics.update({"params/trainable": trainable, "params/total": total})
    run_dir.write_json("metrics.json", metrics)
    if run.adapter.type != "none" and run.adapter.merge_best and world.is_main:
        merge_best(run, run_dir.path)
    run_dir.write_card(run, metrics, env["command"])  # a resumed run shows the original
    log.info("done: %s", " ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                   if isinstance(v, float)))
    return metrics


def config_tree(run: RunConfig) -> Tree:
    """The resolved run config as a rich tree, one branch per group."""
    tree = Tree("[bold]config", guide_style="dim")
    for key, value in dataclasses.asdict(run).items():
        if isinstance(value, dict):
            tree.add(f"[bold cyan]{key}").add(OmegaConf.to_yaml(value).rstrip())
        else:
            tree.add(f"[bold cyan]{key}[/]: {value}")
    return tree


def resume_point(run: RunConfig, run_dir: RunDir) -> Path | None:
    """The checkpoint to continue from (None: start at step 0). Without `resume`, refuses a
    run dir that already holds a run, which would mix two runs' metrics and checkpoints."""
    if not run.resume:
        if (run_dir.path / METRICS_LOG).exists() or run_dir.checkpoints.exists():
            raise ConfigError(f"run dir {run_dir.path} already holds a run; set another run_dir, "
                              f"or continue it with resume={run_dir.path}")
        return None
    if Path(run.resume).resolve() != run_dir.path.resolve():
        raise ConfigError(f"resume={run.resume} must be the run dir itself (run_dir="
                          f"{run_dir.path}); use `sft train resume={run.resume}`")
    for change in config_changes(run, run_dir.path):
        log.warning("resuming with a setting changed from the run's config.yaml: %s", change)
    if run_dir.is_main:
        checkpoint.clean_partial(run_dir.checkpoints)
    found = checkpoint.latest_valid(run_dir.checkpoints)
    if found is None:
        log.warning("no valid checkpoint in %s: training again from step 0", run_dir.checkpoints)
    return found


def record_resume(run_dir: RunDir, env: dict[str, Any], start: Path | None) -> dict[str, Any]:
    """Keep the original env.json (what `sft reproduce` compares with) and append this
    resume's command, environment and starting step to its `resumes` list."""
    path = run_dir.path / "env.json"
    original = json.loads(path.read_text()) if path.is_file() else dict(env)
    entry = {k: env[k] for k in ("command", "overrides", "versions", "git", "device")}
    entry["from_step"] = checkpoint.step_of(start) if start is not None else 0
    original.setdefault("resumes", []).append(entry)
    return original


def load_finished(run_dir: str | Path, overrides: list[str] | None = None,
                  splits: tuple[str, ...] | None = ()) -> tuple[RunConfig, Prepared,
                                                               PreTrainedModel]:
    """The run's config, prepared task/data and its best model, ready to evaluate."""
    run = load_run(run_dir, overrides)
    apply_threads(run.hardware)
    best = Path(run_dir) / checkpoint.BEST
    if not best.is_dir():
        raise SftError(f"{best} not found; the run has not finished an evaluation yet")
    adapter = adapter_folder(best)
    trained, run = run, replace(run, model=saved_model(run.model, best))
    prepared = prepare(run, splits)
    if adapter == best:  # an unmerged adapter: onto its base, merged for inference
        model = merge(adapted_model(trained, Path(run_dir), prepared.task, best))
    else:
        model = prepared.task.build_model(run.model)
    model.eval()
    return run, prepared, model.to(resolve_device(run.hardware))
