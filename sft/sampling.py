"""The order of training examples: one seam for shuffling, length grouping and sharding.

An epoch's order is a pure function of (seed, epoch), so a resumed run recomputes it and
skips the batches already done instead of storing sampler state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MEGA_BATCH = 50  # batches per length-sorted group, as HF's LengthGroupedSampler


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  rank: int = 0, world_size: int = 1,
                  lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Batches of indices for one epoch; each rank takes every world_size-th batch.

    With `lengths`, a shuffled order is cut into mega-batches of MEGA_BATCH batches, each
    sorted by length, so a batch holds sequences of similar length and pads little; the
    batch order is then shuffled again so lengths do not drift through the epoch.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
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
