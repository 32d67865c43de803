"""The order of training examples: one seam for shuffling, length grouping and sharding.

An epoch's order is a pure function of (seed, epoch), so a resumed run recomputes it and
skips the batches already done instead of storing sampler state.
"""

from __future__ import annotations

import torch


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Batches of indices for one epoch; each rank takes every world_size-th batch."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = list(range(n))
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if world_size > 1:
        usable = len(batches) - len(batches) % world_size
        batches = batches[rank:usable:world_size]
    return batches
