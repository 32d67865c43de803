"""The process group of a run launched by torchrun: one process per device.

    torchrun --nproc_per_node 2 -m sft.cli train task=sentiment ...

Every rank composes the same config; rank 0's start time is broadcast so all ranks agree on
one run dir, and only rank 0 writes into it (Hydra's .hydra/ and train.log included).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> World:
    """Join the process group torchrun describes in the environment (a no-op otherwise)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), size)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend)
    return world


def shared_start_time(world: World) -> datetime:
    """Rank 0's clock, so `${now:...}` in run_dir names the same folder on every rank."""
    stamp = [datetime.now()]
    if world.size > 1:
        dist.broadcast_object_list(stamp, src=0)
    return stamp[0]


def teardown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
