"""Checkpoints: atomic writes, newest-valid lookup, pruning, and the best/ model."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def atomic_folder_write(target: Path, write: Any) -> Path:
    """Write a folder via a temporary sibling and a rename, so readers never see half."""
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    _fsync_tree(tmp)
    old = target.with_name(f".old-{target.name}")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def save_pretrained(folder: Path, model: PreTrainedModel,
                    tokenizer: PreTrainedTokenizerBase) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def save_checkpoint(checkpoints: Path, step: int, model: PreTrainedModel,
                    tokenizer: PreTrainedTokenizerBase, state: dict[str, Any]) -> Path:
    def write(tmp: Path) -> None:
        save_pretrained(tmp, model, tokenizer)
        torch.save(state, tmp / STATE_FILE)

    return atomic_folder_write(checkpoints / f"step-{step}", write)


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not checkpoints.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def prune(checkpoints: Path, keep_last: int) -> None:
    for old in list_checkpoints(checkpoints)[:-keep_last]:
        shutil.rmtree(old)


def load_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)


def load_weights(model: PreTrainedModel, folder: Path) -> None:
    """Load safetensors weights saved by save_pretrained into an existing model."""
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied and not any(k.endswith(t) for t in tied)]
    if unexpected or missing:
        raise RuntimeError(f"weights in {folder} do not fit the model: "
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
