"""How a model is spread over processes: the one place that knows about DDP.

A strategy owns wrapping the model, suppressing gradient sync on all but the last
micro-batch of a step, reductions across ranks, the full state dict (gathered for
best/ and checkpoints) and which rank writes. The trainer keeps one plain model and
the handle `wrap` returns. Single process and DDP today; FSDP2 fits the same seam.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sft.parallel.world import World


class SingleProcess:
    """One process, one device: every collective is the identity."""

    def __init__(self, world: World, device: torch.device) -> None:
        self.world, self.device = world, device

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def no_sync(self, wrapped: nn.Module, last_micro_batch: bool) -> AbstractContextManager:
        return contextlib.nullcontext()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` over ranks."""
        return value

    def sum_counts(self, counts: list[int]) -> list[int]:
        """Integer counts summed over ranks (no device round trip in a single process)."""
        return counts

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every rank, in rank order."""
        return [obj]

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()


class DataParallel(SingleProcess):
    """DDP: one model replica per rank, gradients all-reduced once per optimizer step."""

    def wrap(self, model: nn.Module) -> nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, wrapped: nn.Module, last_micro_batch: bool) -> AbstractContextManager:
        assert isinstance(wrapped, DistributedDataParallel)
        return contextlib.nullcontext() if last_micro_batch else wrapped.no_sync()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        dist.all_reduce(value)
        return value

    def sum_counts(self, counts: list[int]) -> list[int]:
        return [int(c) for c in self.sum(torch.tensor(counts, device=self.device)).tolist()]

    def gather(self, obj: Any) -> list[Any]:
        found: list[Any] = [None] * self.world.size
        dist.all_gather_object(found, obj)
        return found


def make_strategy(world: World, device: torch.device) -> SingleProcess:
    return SingleProcess(world, device) if world.size == 1 else DataParallel(world, device)
