"""`sft cv` folds on synthetic data: disjoint, covering the pool once, stratified, seeded."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from sklearn.model_selection import KFold

from sft.data.folds import fold_indices, fold_splits  # the one place these internals are imported
from sft.errors import ConfigError

FOLDS = 5


def labelled(n_train: int = 47, n_validation: int = 16) -> DatasetDict:
    """Three imbalanced classes (about 6:3:2) over unique ids, so rows can be traced."""
    def rows(ids: range) -> Dataset:
        return Dataset.from_dict({"id": list(ids), "labels": [(0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2)[i % 11]
                                                            for i in ids]})

    return DatasetDict(train=rows(range(n_train)), validation=rows(range(n_train, n_train + n_validation)),
                       test=Dataset.from_dict({"id": [-1, -2], "labels": [0, 1]}))


def column(dataset: Dataset, name: str) -> list:
    return list(dataset[name])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_folds_partition_the_pool_and_are_stratified(seed: int) -> None:
    raw = labelled()
    pool = column(raw["train"], "id") + column(raw["validation"], "id")
    labels = dict(zip(pool, column(raw["train"], "labels") + column(raw["validation"], "labels"),
                      strict=True))
    splits = fold_splits(raw, FOLDS, seed)
    assert len(splits) == FOLDS
    validation_ids = [column(split["validation"], "id") for split in splits]
    # every pooled example is validated exactly once, across folds
    assert sorted(i for ids in validation_ids for i in ids) == sorted(pool)
    for split, val in zip(splits, validation_ids, strict=True):
        train = column(split["train"], "id")
        assert len(set(train)) == len(train) and not set(train) & set(val)
        assert sorted(train + val) == sorted(pool)  # a fold's train + validation is the pool
        assert column(split["test"], "id") == [-1, -2]  # the test split is left alone
        assert [labels[i] for i in val] == column(split["validation"], "labels")  # rows keep labels
        # stratified: each class's count is within one example of the pool's proportion
        counts, share = Counter(labels[i] for i in val), Counter(labels.values())
        for label, total in share.items():
            assert abs(counts[label] - len(val) * total / len(pool)) <= 1, (label, counts)
    sizes = [len(v) for v in validation_ids]
    assert max(sizes) - min(sizes) <= 1


def test_the_same_seed_gives_the_same_folds_and_another_seed_others() -> None:
    def folds(seed: int) -> list[list[int]]:
        return [column(s["validation"], "id") for s in fold_splits(labelled(), FOLDS, seed)]

    assert folds(3) == folds(3)
    assert folds(3) != folds(4)


@pytest.mark.parametrize("labels", [None, "token_lists", "class_rarer_than_folds"])
def test_without_usable_class_labels_folds_fall_back_to_plain_kfold(labels: str | None) -> None:
    n, seed = 23, 5
    columns: dict[str, list] = {"id": list(range(n))}
    if labels == "token_lists":  # token classification: one label per word
        columns["labels"] = [[i % 3, 0] for i in range(n)]
    elif labels == "class_rarer_than_folds":  # StratifiedKFold cannot put class 1 in 5 folds
        columns["labels"] = [int(i < 2) for i in range(n)]
    got = fold_indices(Dataset.from_dict(columns), FOLDS, seed)
    expected = KFold(FOLDS, shuffle=True, random_state=seed).split(np.zeros(n))
    for (train, val), (train_kf, val_kf) in zip(got, expected, strict=True):
        assert np.array_equal(train, train_kf) and np.array_equal(val, val_kf)


def test_more_folds_than_examples_is_a_user_error() -> None:
    with pytest.raises(ConfigError, match="folds=5 needs at least 5 examples"):
        fold_indices(Dataset.from_dict({"id": [0, 1, 2], "labels": [0, 1, 0]}), FOLDS, 0)
