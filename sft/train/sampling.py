"""The order of training examples: one seam for shuffling, length grouping, sharding and
(later) other ways to cut batches (`trainer.batching`).

An epoch's order is a pure function of (seed, epoch), so a resumed run recomputes it and
skips the batches already done instead of storing sampler state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

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
    if world_size > 1:
        usable = len(batches) - len(batches) % world_size
        batches = batches[rank:usable:world_size]
    return batches


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


def make_loader(dataset: Dataset, batches: list[list[int]],
                collate: Callable[[dict[str, list]], Any], num_workers: int,
                seed: int = 0) -> DataLoader:
    """Each sampler item is a whole batch of indices, fetched columnar in one read.

    The loader gets its own generator: without one, every new iterator draws its workers'
    base seed from the global torch RNG, so an evaluation or a resume would shift the
    dropout masks of the following training steps."""
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=num_workers,
                      collate_fn=collate, generator=torch.Generator().manual_seed(seed))
