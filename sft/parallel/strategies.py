"""How a model is spread over processes: the one place that knows about DDP and FSDP2.

A strategy owns wrapping the model, suppressing gradient sync on all but the last
micro-batch of a step, reductions across ranks, the full state dict (gathered for best/ and
exports) and which rank writes. The trainer keeps the model it built and the handle `wrap`
returns. Single process, DDP (a replica per rank) and FSDP2 (`fully_shard` per transformer
block: parameters, gradients and optimizer state sharded; checkpoints as sharded
torch.distributed.checkpoint files that load onto any number of ranks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from sft.config.schema import ParallelConfig
from sft.errors import ConfigError
from sft.parallel.world import World


class SingleProcess:
    """One process, one device: every collective is the identity."""

    shards_state = False  # checkpoints hold full weights and a plain optimizer state dict
    lockstep = False  # ranks may run different numbers of forwards (evaluation shards rows)

    def __init__(self, world: World, device: torch.device) -> None:
        self.world, self.device = world, device

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    def wrap(self, model: nn.Module, compile: bool = False) -> nn.Module:
        return torch.compile(model) if compile else model

    def no_sync(self, wrapped: nn.Module, last_micro_batch: bool) -> AbstractContextManager:
        return contextlib.nullcontext()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` over ranks."""
        return value

    def max_count(self, count: int) -> int:
        return count

    def sum_counts(self, counts: list[int]) -> list[int]:
        """Integer counts summed over ranks (no device round trip in a single process)."""
        return counts

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every rank, in rank order."""
        return [obj]

    def barrier(self) -> None:
        pass

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's weights on the main rank (a collective when sharded)."""
        return model.state_dict()

    def load_full_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> tuple:
        """Load full weights (read on the main rank; others may pass {} when sharded);
        returns (missing, unexpected) keys."""
        return model.load_state_dict(state, strict=False)


class DataParallel(SingleProcess):
    """DDP: one model replica per rank, gradients all-reduced once per optimizer step."""

    def wrap(self, model: nn.Module, compile: bool = False) -> nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(super().wrap(model, compile), device_ids=ids)

    def no_sync(self, wrapped: nn.Module, last_micro_batch: bool) -> AbstractContextManager:
        assert isinstance(wrapped, DistributedDataParallel)
        return contextlib.nullcontext() if last_micro_batch else wrapped.no_sync()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        dist.all_reduce(value)
        return value

    def max_count(self, count: int) -> int:
        value = torch.tensor(count, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value)

    def sum_counts(self, counts: list[int]) -> list[int]:
        return [int(c) for c in self.sum(torch.tensor(counts, device=self.device)).tolist()]

    def gather(self, obj: Any) -> list[Any]:
        found: list[Any] = [None] * self.world.size
        dist.all_gather_object(found, obj)
        return found

    def barrier(self) -> None:
        dist.barrier()


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one: the classes transformers names in
    `_no_split_modules` (LlamaDecoderLayer, BertLayer, T5Block ...), as TRL and accelerate do."""
    names = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ConfigError(f"parallel=fsdp found no transformer blocks in {type(model).__name__} "
                          "(it names no _no_split_modules); use parallel=ddp")
    return blocks


class FullyShardedDataParallel(DataParallel):
    """FSDP2: each transformer block is a unit whose parameters are gathered for its forward
    and backward and resharded after; gradients are reduce-scattered, so each rank keeps and
    updates 1/N of the parameters and optimizer state."""

    shards_state = True
    lockstep = True  # every forward is a collective: ranks must run the same number

    def __init__(self, world: World, device: torch.device, config: ParallelConfig,
                 dtype: torch.dtype | None) -> None:
        super().__init__(world, device)
        self.config, self.dtype = config, dtype

    def wrap(self, model: nn.Module, compile: bool = False) -> nn.Module:
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            MixedPrecisionPolicy,
            OffloadPolicy,
            fully_shard,
        )

        # compute in the autocast dtype, reduce gradients and keep the sharded master in fp32
        options = {"mp_policy": MixedPrecisionPolicy(param_dtype=self.dtype,
                                                     reduce_dtype=torch.float32),
                   "offload_policy": CPUOffloadPolicy() if self.config.cpu_offload
                   else OffloadPolicy(),
                   "reshard_after_forward": self.config.reshard_after_forward}
        for block in transformer_blocks(model):
            fully_shard(block, **options)
        fully_shard(model, **options)
        # transformers' generate() then keeps every rank stepping until all have finished
        model._is_fsdp_managed_module = True
        return torch.compile(model) if compile else model

    def no_sync(self, wrapped: nn.Module, last_micro_batch: bool) -> AbstractContextManager:
        return _gradient_sync(wrapped, last_micro_batch)

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))

    def load_full_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> tuple:
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        result = set_model_state_dict(model, state, options=options)
        return result.missing_keys, result.unexpected_keys


@contextlib.contextmanager
def _gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """FSDP2's no_sync: skip the reduce-scatter on all but the last micro-batch."""
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Model and optimizer state as distributed-checkpoint files, every rank writing its own
    shards (a collective); keys are parameter names, so they load onto any number of ranks."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load save_sharded's files, resharded onto this run's ranks (or one process)."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


def make_strategy(world: World, device: torch.device, config: ParallelConfig | None = None,
                  dtype: torch.dtype | None = None) -> SingleProcess:
    """Single process for one rank; DDP, or FSDP2 with parallel.strategy=fsdp, for several."""
    if world.size == 1:
        return SingleProcess(world, device)
    if config is not None and config.strategy == "fsdp":
        return FullyShardedDataParallel(world, device, config, dtype)
    return DataParallel(world, device)
