"""Wire one run together: task, data, model, trainer, run directory."""

from __future__ import annotations

import dataclasses
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from omegaconf import OmegaConf
from rich.console import Console
from rich.tree import Tree
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.config import RunConfig, to_run_config
from sft.data import featurize, load_splits, local_files, sha256_file, tokenizer_fingerprint
from sft.distributed import World
from sft.errors import SftError
from sft.hardware import describe_device, resolve_device
from sft.modeling import load_tokenizer
from sft.rundir import CONFIG_FILE, RunDir, environment
from sft.tasks import build_task
from sft.tasks.base import Task
from sft.trainer import Trainer, seed_everything

log = logging.getLogger("sft")


@dataclass
class Prepared:
    task: Task
    tokenizer: PreTrainedTokenizerBase
    features: DatasetDict


def prepare(run: RunConfig, splits: tuple[str, ...] | None = None) -> Prepared:
    """Tokenizer, task plug-in and cached features of the requested splits (all if None)."""
    tokenizer = load_tokenizer(run.model)
    task = build_task(run.task, tokenizer, run.data)
    raw = load_splits(task, run.data)
    if splits is not None:
        missing = [s for s in splits if s not in raw]
        if missing:
            raise SftError(f"split '{missing[0]}' does not exist for task '{run.task.name}' "
                           f"(splits: {', '.join(raw)})")
        raw = DatasetDict({s: raw[s] for s in splits})
    features = featurize(task, raw, tokenizer_fingerprint(tokenizer), run.data)
    return Prepared(task, tokenizer, features)


def train(run: RunConfig, overrides: list[str] | None = None, console: Console | None = None,
          world: World | None = None) -> dict[str, Any]:
    """Train `run` into run.run_dir and return the final metrics (also in metrics.json)."""
    world = world or World()
    seed_everything(run.seed, run.trainer.deterministic)
    run_dir = RunDir(run.run_dir, is_main=world.is_main)
    prepared = prepare(run)
    model = prepared.task.build_model(run.model)
    if world.is_main:
        (console or Console(stderr=True)).print(config_tree(run))
    device = resolve_device(run.hardware, world.local_rank)
    data_files = {split: sha256_file(path) for split, path in local_files(
        prepared.task, run.data).items()} if run.data.dir else {}
    run_dir.write_config(run)
    run_dir.write_json("env.json", environment(run, describe_device(device), overrides or [],
                                               data_files))
    sizes = ", ".join(f"{s} {len(d)}" for s, d in prepared.features.items())
    log.info("run dir %s | %s on %s | %s", run_dir.path, run.model.name,
             describe_device(device), sizes)
    trainer = Trainer(run, prepared.task, model, prepared.tokenizer, prepared.features, run_dir,
                      console, world)
    metrics = trainer.fit()
    run_dir.write_json("metrics.json", metrics)
    command = "sft train " + " ".join(shlex.quote(o) for o in overrides or [])
    run_dir.write_card(run, metrics, command)
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


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise SftError(f"{path} not found; pass the folder of a finished `sft train` run")
    cfg = OmegaConf.load(path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    return to_run_config(cfg)


def load_finished(run_dir: str | Path, overrides: list[str] | None = None,
                  splits: tuple[str, ...] | None = ()) -> tuple[RunConfig, Prepared,
                                                               PreTrainedModel]:
    """The run's config, prepared task/data and its best model, ready to evaluate."""
    from dataclasses import replace

    run = load_run_config(run_dir, overrides)
    best = Path(run_dir) / "best"
    if not best.is_dir():
        raise SftError(f"{best} not found; the run has not finished an evaluation yet")
    run = replace(run, model=replace(run.model, name_or_path=str(best), init="pretrained",
                                     config_overrides={}, freeze_layers=0,
                                     freeze_embeddings=False, gguf_file=None))
    if splits == ():
        tokenizer = load_tokenizer(run.model)
        prepared = Prepared(build_task(run.task, tokenizer, run.data), tokenizer, DatasetDict())
    else:
        prepared = prepare(run, splits)
    model = prepared.task.build_model(run.model)
    model.eval()
    return run, prepared, model.to(resolve_device(run.hardware))
