"""`parallel.nproc_per_node=N`: the processes of one run, started by torch's elastic launcher
(what torchrun runs) from inside the one Hydra job, so there is one run dir and one
.hydra/, not one per process. Each worker gets the resolved run config, joins the process
group torch describes in its environment (gloo on CPU, nccl on GPU) and trains.

A worker that dies (killed, out of memory, an exception) makes the launcher stop the others
(SIGTERM, then SIGKILL after `parallel.shutdown_timeout_s`) and raise; a signal to the
launcher goes to every worker, which saves a checkpoint and stops.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import torch

from sft import errors
from sft.errors import SftError, WorkerFailed

TORCH_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing")


class LauncherStopped(BaseException):
    """The launcher got a signal (SIGTERM, SIGINT); the workers were told to save and stop."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signum)


def launch(worker: Callable[..., Any], args: tuple, nproc: int, shutdown_timeout_s: int,
           hint: str = "") -> list[Any]:
    """Run `worker(*args)` in `nproc` local processes; their return values in rank order.
    A worker's user error (SftError) is raised here as the same error; a death as
    WorkerFailed naming the rank, with `hint` (how to resume) appended."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in list(logging.root.manager.loggerDict):  # their tracebacks say what ours do
        if name.startswith(TORCH_LOGGERS):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          run_id=f"sft-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0,
                          shutdown_timeout=shutdown_timeout_s, start_method="spawn")
    try:
        results = elastic_launch(config, worker)(*args)
    except SignalException as err:
        raise LauncherStopped(int(err.sigval)) from None
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        raise worker_error(rank, failure.exitcode, failure.message, hint) from None
    return [results[rank] for rank in sorted(results)]


def worker_error(rank: int, exitcode: int, message: Any, hint: str) -> SftError:
    """The first failure as our error: a user error the worker raised keeps its class and
    text; a death or a crash names the rank."""
    text = message.get("message", "") if isinstance(message, dict) else str(message)
    name, _, said = text.partition(": ")
    kind = getattr(errors, name, None)
    if isinstance(kind, type) and issubclass(kind, SftError) and kind is not SftError:
        return kind(said)
    if exitcode < 0:
        import signal

        what = f"was killed by {signal.Signals(-exitcode).name}"
    else:
        what = f"failed with exit code {exitcode}" + (f": {text}" if text else "")
    return WorkerFailed(f"rank {rank} {what}; the launcher stopped the other ranks"
                        + (f"; {hint}" if hint else ""))


def share_cpu_threads() -> None:
    """Split the CPU's threads among the workers of this machine (torchrun sets
    OMP_NUM_THREADS=1); N workers with one thread per core each would oversubscribe it."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // local))
