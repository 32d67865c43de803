"""k-fold cross-validation splits: train and validation pooled into `folds` folds with a
fixed seed, stratified by label where every class has at least `folds` examples."""

from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict, concatenate_datasets
from sklearn.model_selection import KFold, StratifiedKFold

from sft.errors import ConfigError


def fold_indices(pool: Dataset, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled (stratified when rows carry one integer label) train/validation indices."""
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


def select_fold(raw: DatasetDict, folds: int, fold: int, seed: int) -> DatasetDict:
    return fold_splits(raw, folds, seed)[fold]
