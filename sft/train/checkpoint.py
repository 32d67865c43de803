"""Checkpoints: atomic writes, newest-valid lookup, pruning, and the best/ model.

A checkpoint folder is written as `.tmp-step-N`, fsynced, and renamed to `step-N`; its
`manifest.json` (size and sha256 of every file) is written last, so a folder whose manifest
is missing or does not match its files is half-written or corrupt, and is skipped.

`trainer.async_checkpoint`: the loop takes a CPU copy of the weights and trainer state (the
state at that step, so resume stays exact) and an AsyncWriter thread writes, hashes, fsyncs
and renames it while training goes on; one write at a time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.files import sha256_file
from sft.models.adapters import adapter_folder, load_adapter_weights
from sft.parallel.strategies import SingleProcess, load_sharded, save_sharded

STATE_FILE = "trainer_state.pt"
CHECKPOINTS, BEST = "checkpoints", "best"  # folders of a run dir
MANIFEST = "manifest.json"
SHARDED = "sharded"  # a sharded strategy's model + optimizer (torch.distributed.checkpoint)
_STEP_DIR = re.compile(r"^step-(\d+)$")
log = logging.getLogger("sft")


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def atomic_folder_write(target: Path, write: Any) -> Path:
    """Write a folder via a temporary sibling and a rename, so readers never see half."""
    tmp = _begin(target)
    write(tmp)
    return _commit(target, tmp)


def _begin(target: Path) -> Path:
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _commit(target: Path, tmp: Path) -> Path:
    """Manifest last, fsync, then swap `tmp` in for `target`."""
    write_manifest(tmp)
    _fsync_tree(tmp)
    old = target.with_name(f".old-{target.name}")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX: fsync the directory that holds the entry)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> None:
    """Record size and sha256 of every file; written last, so its presence marks completion."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))


def verify(folder: Path, hashes: bool = True) -> str | None:
    """None if `folder` matches its manifest, else what is wrong (sizes only if not `hashes`)."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST} (half-written?)"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['size']}"
        if hashes and sha256_file(path) != entry["sha256"]:
            return f"{name} does not match its sha256"
    return None


def snapshot(obj: Any) -> Any:
    """A copy of `obj` whose tensors are CPU copies: what an asynchronous write may read
    while the loop goes on changing the originals."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class AsyncWriter:
    """Runs one write at a time on a background thread. `submit` first waits for the write
    before it; `wait` blocks until the current one is done and raises its error, if any."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as err:  # handed to the loop at its next wait
                self._error = err

        self._thread = threading.Thread(target=run, name="sft-checkpoint", daemon=False)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def save_model(target: Path, strategy: SingleProcess, model: PreTrainedModel,
               tokenizer: PreTrainedTokenizerBase, state: dict[str, Any] | None = None,
               optimizer: torch.optim.Optimizer | None = None,
               writer: AsyncWriter | None = None, after: Callable[[], None] | None = None) -> None:
    """A transformers folder (safetensors + tokenizer; `pipeline()` loads it), plus the
    trainer state for a checkpoint, written atomically. Called on every rank: the strategy
    gathers the full weights (a collective when sharded) and rank 0 writes. A sharded
    strategy's checkpoint holds the model and optimizer as distributed-checkpoint shards
    (SHARDED, every rank writing its own) instead of full weights. With `writer`, rank 0
    copies weights and state to the CPU and the writer's thread writes them, then calls
    `after` (sharded checkpoints are written in place, by every rank)."""
    sharded = state is not None and strategy.shards_state
    weights = None if sharded else strategy.full_state_dict(model)
    if writer is not None and not sharded:
        if strategy.is_main:
            weights, state = snapshot(weights), snapshot(state)

            def write() -> None:
                _write_full(target, model, tokenizer, weights, state)
                if after is not None:
                    after()

            writer.submit(write)
        return
    tmp = _begin(target) if strategy.is_main else target.with_name(f".tmp-{target.name}")
    if sharded:
        assert optimizer is not None
        strategy.barrier()  # the folder exists before any rank writes into it
        save_sharded(tmp / SHARDED, model, optimizer)
        strategy.barrier()
    if not strategy.is_main:
        return
    if sharded:
        model.config.save_pretrained(tmp)
        _write_rest(tmp, tokenizer, state)
        _commit(target, tmp)
    else:
        _write_full(target, model, tokenizer, weights, state, tmp)
    if after is not None:
        after()


def _write_full(target: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                weights: dict[str, torch.Tensor] | None, state: dict[str, Any] | None,
                tmp: Path | None = None) -> None:
    tmp = tmp or _begin(target)
    model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
    _write_rest(tmp, tokenizer, state)
    _commit(target, tmp)


def _write_rest(tmp: Path, tokenizer: PreTrainedTokenizerBase,
                state: dict[str, Any] | None) -> None:
    tokenizer.save_pretrained(tmp)
    if state is not None:
        torch.save(state, tmp / STATE_FILE)


def restore(folder: Path, strategy: SingleProcess, model: PreTrainedModel,
            optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Weights (and, from sharded files, the optimizer) of checkpoint `folder` into `model`;
    returns the trainer state. Sharded files load onto any number of ranks."""
    if (folder / SHARDED).is_dir():
        load_sharded(folder / SHARDED, model, optimizer)
    else:
        load_weights(model, folder, strategy)
    return load_state(folder)


def _step_dirs(checkpoints: Path) -> list[Path]:
    """Every `step-N` folder, oldest first, valid or not."""
    if not checkpoints.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir()
             if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def list_checkpoints(checkpoints: Path, hashes: bool = False) -> list[Path]:
    """Complete checkpoint folders, oldest first; a folder that fails its manifest check
    (sizes, and sha256 too with `hashes`) is skipped with a warning."""
    valid = []
    for folder in _step_dirs(checkpoints):
        problem = verify(folder, hashes)
        if problem:
            log.warning("skipping checkpoint %s: %s", folder, problem)
        else:
            valid.append(folder)
    return valid


def latest_valid(checkpoints: Path) -> Path | None:
    """The newest checkpoint whose files match their manifest hashes (checked newest first,
    so only the folders that are skipped and the one returned are hashed)."""
    for folder in reversed(_step_dirs(checkpoints)):
        problem = verify(folder)
        if problem is None:
            return folder
        log.warning("skipping checkpoint %s: %s", folder, problem)
    return None


def step_of(folder: Path) -> int:
    match = _STEP_DIR.match(folder.name)
    assert match, folder
    return int(match.group(1))


def _remove(folder: Path) -> None:
    """Rename first, so a crash mid-delete never leaves a half-deleted `step-N` behind."""
    doomed = folder.with_name(f".old-{folder.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    folder.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def prune(checkpoints: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` valid checkpoints; delete every step-N folder older than
    them (valid or not). Only `checkpoints/` is touched, never `best/`."""
    kept = list_checkpoints(checkpoints)[-keep_last:]
    if not kept:
        return
    oldest_kept = step_of(kept[0])
    for folder in _step_dirs(checkpoints):
        if step_of(folder) < oldest_kept:
            _remove(folder)


def clean_partial(checkpoints: Path) -> None:
    """Remove temporary folders left by a write or delete that was killed midway."""
    if checkpoints.is_dir():
        for folder in checkpoints.iterdir():
            if folder.name.startswith((".tmp-", ".old-")):
                log.warning("removing %s left by an interrupted checkpoint write", folder)
                shutil.rmtree(folder, ignore_errors=True)


def load_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)


def load_weights(model: PreTrainedModel, folder: Path, strategy: SingleProcess | None = None) -> None:
    """Load safetensors weights saved by save_pretrained into an existing model (an adapted
    model: the adapter and heads the folder holds); a sharded model reads them on rank 0 only
    and takes its shards from there."""
    adapter = adapter_folder(folder)
    if isinstance(model, PeftModel) and adapter is not None:
        load_adapter_weights(model, adapter)
        return
    reads = strategy is None or strategy.is_main or not strategy.shards_state
    state = {k: v for shard in sorted(folder.glob("*.safetensors")) if reads
             for k, v in load_file(shard).items()}
    if strategy is None:
        missing, unexpected = model.load_state_dict(state, strict=False)
    else:
        missing, unexpected = strategy.load_full_state_dict(model, state)
    if not reads:  # the main rank checks what it read
        return
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied and not any(k.endswith(t) for t in tied)]
    if unexpected or missing:
        raise RuntimeError(f"weights in {folder} do not fit the model: "
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
