"""Turning columns of token lists into padded tensors, and moving batches to a device."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def pad_columns(columns: dict[str, list], pad_values: dict[str, int],
                multiple: int | None) -> dict[str, torch.Tensor]:
    """Pad the ragged list columns named in pad_values to one length (rounded up to
    `multiple`, which keeps matmul shapes friendly) and stack them as tensors."""
    out: dict[str, torch.Tensor] = {}
    lengths = [len(x) for x in next(iter(columns[k] for k in pad_values if k in columns))]
    width = max(lengths)
    if multiple:
        width = -(-width // multiple) * multiple
    for key, value in pad_values.items():
        if key not in columns:
            continue
        rows = columns[key]
        tensor = torch.full((len(rows), width), value, dtype=torch.long)
        for i, row in enumerate(rows):
            tensor[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        out[key] = tensor
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def batched(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
