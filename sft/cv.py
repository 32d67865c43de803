"""k-fold cross-validation: `sft cv task=sentiment folds=5 [overrides]`.

Train and validation are pooled and split into `folds` folds with the fixed
`data.split_seed` (stratified by label for classification); fold k trains on the other
folds and validates on fold k, with the same `seed` in every fold. Each fold is a complete
run dir `<cv dir>/fold-k/` trained by the one training path (sft.runner.train); the end
of `sft cv` is the sweep report over the folds, with mean ± std.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, concatenate_datasets
from omegaconf import DictConfig
from rich.console import Console

from sft.config import CONFIG_DIR, register, to_run_config
from sft.errors import ConfigError

log = logging.getLogger("sft")
DEFAULT_DIR = "cv/${task.name}/${model.name}/${started:%Y-%m-%d_%H-%M-%S}"


def split_args(args: list[str]) -> tuple[int, list[str]]:
    """`folds=K` is cv's own argument; everything else is a Hydra override."""
    folds, overrides = 5, []
    for arg in args:
        if arg.startswith("-"):
            raise ConfigError(f"sft cv takes no option '{arg}'; pass folds=K and key=value "
                              "overrides (a sweep of cv runs is not supported)")
        if arg.startswith("folds="):
            value = arg.partition("=")[2]
            if not value.isdigit() or int(value) < 2:
                raise ConfigError(f"folds must be an integer >= 2, got '{value}'")
            folds = int(value)
        else:
            overrides.append(arg)
    if not any(o.startswith("run_dir=") for o in overrides):
        overrides.append(f"run_dir={DEFAULT_DIR}")
    return folds, overrides


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def fold_indices(pool: Dataset, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled (stratified when rows carry one integer label) train/validation indices."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if len(pool) < folds:
        raise ConfigError(f"folds={folds} needs at least {folds} examples, the data has "
                          f"{len(pool)}")
    labels = pool["labels"] if "labels" in pool.column_names else None
    if labels is not None and all(isinstance(x, int) for x in labels):
        counts = np.bincount(labels)
        if counts[counts > 0].min() >= folds:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
            return list(splitter.split(np.zeros(len(pool)), labels))
    return list(KFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(pool))))


def fold_splits(raw: DatasetDict, folds: int, seed: int) -> list[DatasetDict]:
    """train+validation pooled into `folds` train/validation pairs; test stays as it is."""
    pool = concatenate_datasets([raw["train"], raw["validation"]])
    result = []
    for train_idx, val_idx in fold_indices(pool, folds, seed):
        split = DatasetDict(train=pool.select(train_idx), validation=pool.select(val_idx))
        if "test" in raw:
            split["test"] = raw["test"]
        result.append(split)
    return result


def cross_validate(args: list[str], console: Console) -> tuple[Path, int, int]:
    """Train every fold; returns the cv dir, the number of failed folds and of folds."""
    from sft.cli import error_message, quiet_progress_bars
    from sft.data import load_splits
    from sft.modeling import load_tokenizer
    from sft.report import write_job_record
    from sft.runner import train
    from sft.tasks import build_task

    folds, overrides = split_args(args)
    quiet_progress_bars()
    run = to_run_config(compose(overrides))
    cv_dir = Path(run.run_dir)
    task = build_task(run.task, load_tokenizer(run.model), run.data)
    splits = fold_splits(load_splits(task, run.data), folds, run.data.split_seed)
    _log_to_console()
    user_overrides = [o for o in overrides if o != f"run_dir={DEFAULT_DIR}"]
    failed = 0
    for k, raw in enumerate(splits):
        fold_dir = cv_dir / f"fold-{k}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        handler = _log_to_file(fold_dir / "train.log")
        log.info("fold %d/%d: train %d, validation %d", k + 1, folds, len(raw["train"]),
                 len(raw["validation"]))
        start, error = time.perf_counter(), None
        try:
            train(replace(run, run_dir=str(fold_dir)), user_overrides, console, raw=raw)
        except Exception as err:
            if os.environ.get("SFT_DEBUG") == "1":
                raise
            error = error_message(err)
            failed += 1
            log.error("%s", error)
            console.print(f"[red]fold {k} failed[/red]: {error}", highlight=False)
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        write_job_record(fold_dir, [*user_overrides, f"fold={k}"], time.perf_counter() - start,
                         error)
    return cv_dir, failed, folds


def _log_to_console() -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)


def _log_to_file(path: Path) -> logging.Handler:
    """Each fold's train.log, like Hydra's job log in a `sft train` run dir."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler
