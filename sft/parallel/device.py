"""Device and numeric precision from the `hardware` config."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Iterator

import torch

from sft.config.schema import HardwareConfig
from sft.errors import ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger("sft")


def apply_threads(cfg: HardwareConfig) -> None:
    """`hardware.num_threads` sets torch's intra-op CPU threads (null: torch's default, one
    per physical core); more threads than cores only adds contention."""
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)


# mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; True where it took effect.

    torch's CPU tensors come from malloc, and glibc serves each block above its mmap threshold
    (at most 32 MB) with fresh pages and unmaps them on free. A training step frees and
    reallocates the same large tensors (MiniLM's word-embedding gradient alone is 47 MB), so
    every step page-faults and zeroes them again in the kernel: 14% of a MiniLM CPU step.
    Serving all blocks from the heap and never trimming it does what jemalloc/tcmalloc under
    LD_PRELOAD do in Intel's PyTorch CPU tuning guide, without a preload; the process keeps
    its peak footprint until it exits.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator stays
        mallopt = None
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def apply_host(cfg: HardwareConfig, device: torch.device) -> None:
    """The host-side settings of `hardware`: CPU threads, and on a CPU run the allocator."""
    apply_threads(cfg)
    if device.type == "cpu" and cfg.reuse_freed_memory and not keep_freed_memory():
        log.debug("hardware.reuse_freed_memory: no glibc mallopt here; allocator unchanged")


def cpu_has_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX); elsewhere a bf16 matmul
    falls back to slow generic code and autocast makes training slower, not faster."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_device(cfg: HardwareConfig, local_rank: int = 0) -> torch.device:
    """The configured device; under torchrun each process takes GPU `local_rank`."""
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("hardware.device=cuda but no CUDA GPU is visible; use hardware=cpu")
    return torch.device(f"cuda:{local_rank}" if device == "cuda" else device)


def autocast_dtype(cfg: HardwareConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto` picks bf16 on GPUs that have it."""
    if cfg.precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("hardware.precision=fp16 needs a CUDA GPU; use bf16 on CPU")
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log.warning("hardware.precision=bf16 on a CPU without native bf16 matmul (no AVX512-BF16/"
                    "AMX): expect it to be slower than fp32")
    return _DTYPES[cfg.precision]


def pad_multiple(configured: int | None, device: torch.device) -> int | None:
    """`trainer.pad_to_multiple_of`, with null resolved per device."""
    if configured is None:
        return 8 if device.type == "cuda" else None
    return configured if configured > 1 else None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
