"""The order of training examples: one seam for shuffling, length grouping, sharding and
the ways to cut batches (`trainer.batching`: examples, tokens, packed).

An epoch's order is a pure function of (seed, epoch), so a resumed run recomputes it and
skips the batches already done instead of storing sampler state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from sft.config.schema import TrainerConfig
from sft.data.features import sequence_lengths
from sft.data.packing import plan_rows

MEGA_BATCH = 50  # batches per length-sorted group, as HF's LengthGroupedSampler


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's order and of its loader's workers: a pure function of both."""
    return seed * 100_003 + epoch


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  rank: int = 0, world_size: int = 1,
                  lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Batches of indices for one epoch; each rank takes every world_size-th batch.

    With `lengths`, a shuffled order is cut into mega-batches of MEGA_BATCH batches, each
    sorted by length, so a batch holds sequences of similar length and pads little; the
    batch order is then shuffled again so lengths do not drift through the epoch.
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    if lengths is not None:
        span = batch_size * MEGA_BATCH
        order = [i for start in range(0, n, span)
                 for i in sorted(order[start : start + span], key=lambda j: -lengths[j])]
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if lengths is not None and shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return for_rank(batches, rank, world_size)


def for_rank(batches: list, rank: int, world_size: int) -> list:
    """Rank `rank`'s share: every world_size-th batch; the remainder is dropped so every
    rank takes the same number of steps."""
    if world_size == 1:
        return batches
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]


class ExampleBatches:
    """`trainer.batching=examples`: `batch_size` examples per micro-batch (per rank)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 lengths: Sequence[int] | None = None) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.lengths = rank, world_size, lengths
        self.per_epoch = len(epoch_batches(n, batch_size, 0, 0, False, rank, world_size))

    def epoch(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self.n, self.batch_size, self.seed, epoch, True, self.rank,
                             self.world_size, self.lengths)


class _ByLength:
    """The frame of token and packed batches: documents shuffled per epoch, planned by length
    into units whose number depends only on the lengths (so every epoch has the same number
    of steps), the units shuffled, grouped into micro-batches and shared out across ranks."""

    def __init__(self, lengths: Sequence[int], seed: int, rank: int, world_size: int) -> None:
        self.lengths, self.seed, self.rank, self.world_size = lengths, seed, rank, world_size
        self.per_epoch = len(self.epoch(0))

    def _plan(self, order: list[int]) -> list[list[int]]:
        raise NotImplementedError

    def _batches(self, units: list[list[int]]) -> list:
        return units

    def epoch(self, epoch: int) -> list:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        units = self._plan(order)
        units = [units[i] for i in torch.randperm(len(units), generator=generator)]
        return for_rank(self._batches(units), self.rank, self.world_size)


class TokenBatches(_ByLength):
    """`trainer.batching=tokens`: micro-batches of similar lengths holding at most `budget`
    padded tokens each. Documents are sorted by length (ties in the shuffled order)."""

    def __init__(self, lengths: Sequence[int], budget: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.budget = budget
        super().__init__(lengths, seed, rank, world_size)

    def _plan(self, order: list[int]) -> list[list[int]]:
        return cut_by_tokens(order, self.lengths, self.budget)


def cut_by_tokens(order: Sequence[int], lengths: Sequence[int], budget: int,
                  max_rows: int | None = None) -> list[list[int]]:
    """`order` sorted longest first (stable: ties keep their order), cut into batches of at
    most `budget` padded tokens (rows x longest row; at least one row each) and `max_rows`."""
    batches: list[list[int]] = []
    for i in sorted(order, key=lambda j: -lengths[j]):  # a batch's first row sets its width
        if (batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget
                and (max_rows is None or len(batches[-1]) < max_rows)):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class PackedBatches(_ByLength):
    """`trainer.batching=packed`: documents best-fit into rows of `row_tokens` tokens (no
    padding inside a row), `rows` rows per micro-batch; each item is a list of rows, each
    row a list of document indices."""

    def __init__(self, lengths: Sequence[int], row_tokens: int, rows: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.row_tokens, self.rows = row_tokens, rows
        super().__init__(lengths, seed, rank, world_size)

    def _plan(self, order: list[int]) -> list[list[int]]:
        return plan_rows(self.lengths, order, self.row_tokens)

    def _batches(self, units: list[list[int]]) -> list[list[list[int]]]:
        return [units[i : i + self.rows] for i in range(0, len(units), self.rows)]


Batches = ExampleBatches | TokenBatches | PackedBatches


def batch_plan(trainer: TrainerConfig, max_length: int, seed: int, dataset: Dataset,
               rank: int = 0, world_size: int = 1) -> Batches:
    """The `trainer.batching` plan of the training split."""
    if trainer.batching == "examples":
        lengths = sequence_lengths(dataset) if trainer.group_by_length else None
        return ExampleBatches(len(dataset), trainer.batch_size, seed, rank, world_size, lengths)
    if trainer.batching == "tokens":
        budget = trainer.batch_tokens or trainer.batch_size * max_length
        return TokenBatches(sequence_lengths(dataset), budget, seed, rank, world_size)
    return PackedBatches(sequence_lengths(dataset), max_length, trainer.batch_size, seed, rank,
                         world_size)


def shard(n: int, rank: int, world_size: int, group_starts: Sequence[bool] | None = None) -> range:
    """Rank `rank`'s contiguous share of `n` evaluation rows; with `group_starts`, shares
    begin only where a group begins, so no group is split between ranks."""
    bounds = [round(r * n / world_size) for r in range(world_size + 1)]
    if group_starts is not None:
        for r in range(1, world_size):
            while bounds[r] < n and not group_starts[bounds[r]]:
                bounds[r] += 1
            bounds[r] = max(bounds[r], bounds[r - 1])
    return range(bounds[rank], bounds[rank + 1])


class _Fetch(TorchDataset):
    """Reads one whole batch columnar in one read; a packed batch (a list of rows of
    indices) comes with its row sizes: (columns, sizes)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, item: list) -> Any:
        if item and isinstance(item[0], list):
            return self.dataset[[i for row in item for i in row]], [len(row) for row in item]
        return self.dataset[item]


def make_loader(dataset: Dataset, batches: list[list[int]] | list[list[list[int]]],
                collate: Callable[[Any], Any], num_workers: int, seed: int = 0) -> DataLoader:
    """Each sampler item is a whole batch of indices (or of packed rows), fetched columnar.

    The loader gets its own generator: without one, every new iterator draws its workers'
    base seed from the global torch RNG, so an evaluation or a resume would shift the
    dropout masks of the following training steps."""
    return DataLoader(_Fetch(dataset), sampler=batches, batch_size=None, num_workers=num_workers,
                      collate_fn=collate, generator=torch.Generator().manual_seed(seed))
