"""The process group of a run of several processes: one per device.

    sft train parallel=ddp parallel.nproc_per_node=2 ...      (sft starts them: sft.parallel.launch)
    torchrun --nproc_per_node 2 -m sft.cli train ...          (an external launcher)
    srun --ntasks-per-node 2 sft train ...                    (Slurm, MASTER_ADDR/MASTER_PORT set)

Under an external launcher every rank composes the same config; rank 0's start time is
broadcast so all ranks agree on one run dir, and only rank 0 writes into it (Hydra's .hydra/
and train.log included).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import torch
import torch.distributed as dist

from sft.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment(env: Mapping[str, str]) -> World | None:
    """The world a launcher describes: torchrun's RANK/WORLD_SIZE, or an srun step of several
    tasks (SLURM_PROCID/SLURM_NTASKS); None when this process was started alone."""
    if "WORLD_SIZE" in env:
        return World(int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")),
                     int(env["WORLD_SIZE"]))
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1")
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env and tasks > 1:
        if not env.get("MASTER_ADDR"):
            raise ConfigError(f"srun started {tasks} tasks but MASTER_ADDR is not set; export "
                              "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1) "
                              "and MASTER_PORT=29500 (or use srun torchrun ...)")
        return World(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", "0")), tasks)
    return None


def setup() -> World:
    """Join the process group a launcher describes in the environment (a no-op otherwise)."""
    world = from_environment(os.environ)
    if world is None or world.size == 1:
        return world or World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    return world


def launched() -> bool:
    """True when a launcher (torchrun, srun, ours) started this process as one of a world."""
    return from_environment(os.environ) is not None


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
