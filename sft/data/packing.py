"""Padding-free packing of causal-LM documents: several documents share one row, kept apart by
position_ids that restart at 0 at each document, and a probe that refuses to train when the
model's attention does not keep them apart.

Labels come already shifted (labels[i] is the target at position i, the last one -100), so
packing is plain concatenation and no target lies in another document. transformers 5 turns
restarting position_ids into a per-document causal mask only when no 2-D attention_mask and no
KV cache are passed (sdpa, eager; flash attention only with one row per batch); anything else
silently falls back to one causal mask over the whole row, where later documents attend to earlier
ones and the loss still falls. `check_isolation` catches that before step 0.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from heapq import heappop, heappush
from typing import Any

import torch

from sft.errors import ConfigError

IGNORE = -100
# probe documents: the packed ones follow a first document, so they would see it if masks leak
PROBE_ROWS = ((7, 5), (4, 6))
PROBE_ATOL = 1e-4  # fp32; leaks measure ~0.5 on a random tiny Llama, kernel noise ~1e-7
PROBE_ATOL_HALF = 2e-2  # 16-bit weights (not measured here; the trainer keeps fp32 weights)


def plan_rows(lengths: Sequence[int], order: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing: the documents `order` (indices into `lengths`) into rows of at most
    `capacity` tokens, rows in the order they were opened (the longest documents first).

    Ties in length keep their order in `order`, so a shuffled order changes which documents share
    a row, but the number of rows depends only on the multiset of lengths (rows with the same room
    left are interchangeable), which gives a fixed number of steps per epoch. Among equally good
    rows the earliest opened wins. Rows are bucketed by the room they have left and the non-empty
    buckets kept sorted, so each placement is a bisect.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    sizes = [int(lengths[i]) for i in order]
    # reverse=True keeps ties in their given order (sorted is stable either way)
    ranked = sorted(range(len(sizes)), key=sizes.__getitem__, reverse=True)
    if ranked and sizes[ranked[0]] > capacity:
        raise ValueError(f"document {order[ranked[0]]} has {sizes[ranked[0]]} tokens, more than the row "
                         f"capacity {capacity}; the featurizer should have truncated it")
    if ranked and sizes[ranked[-1]] < 1:
        raise ValueError(f"document {order[ranked[-1]]} is empty; drop it before packing")
    rows: list[list[int]] = []
    by_room: dict[int, list[int]] = {}  # room left -> heap of the rows with that room
    rooms: list[int] = []  # sorted room values whose bucket is non-empty
    for k in ranked:
        need = sizes[k]
        at = bisect_left(rooms, need)
        if at == len(rooms):
            row, room = len(rows), capacity
            rows.append([order[k]])
        else:
            room = rooms[at]
            bucket = by_room[room]
            row = heappop(bucket)  # the earliest row among equal best fits
            if not bucket:
                del by_room[room]
                del rooms[at]
            rows[row].append(order[k])
        room -= need
        if room:  # a full row takes no more documents (none are empty)
            bucket = by_room.get(room)
            if bucket is None:
                by_room[room] = [row]
                insort(rooms, room)
            else:
                heappush(bucket, row)
    return rows


def pack_columns(columns: dict[str, list], row_sizes: list[int], pad_id: int,
                 pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Concatenate documents into rows: row r takes the next row_sizes[r] documents of
    columns["input_ids"] / columns["labels"] (other columns are ignored).

    Returns input_ids, labels and position_ids (restarting at 0 at each document), LongTensors
    [rows, width] with width the longest row rounded up to `pad_to_multiple_of`. There is no
    attention_mask on purpose: with one, transformers 5 ignores the packing and documents leak.
    Tail padding is pad_id / -100 / positions 0, 1, 2.. so it is a separate dummy document.
    """
    ids, labels = columns["input_ids"], columns["labels"]
    if sum(row_sizes) != len(ids) or len(labels) != len(ids):
        raise ValueError(f"row_sizes cover {sum(row_sizes)} documents, the columns hold {len(ids)} "
                         f"input_ids and {len(labels)} labels")
    flat_ids: list[list[int]] = []
    flat_labels: list[list[int]] = []
    flat_pos: list[list[int]] = []
    start = 0
    for size in row_sizes:
        row_ids: list[int] = []
        row_labels: list[int] = []
        row_pos: list[int] = []
        for doc in range(start, start + size):
            doc_ids, doc_labels = ids[doc], labels[doc]
            if len(doc_ids) != len(doc_labels):
                raise ValueError(f"document {doc}: {len(doc_ids)} input_ids but {len(doc_labels)} labels")
            # unshifted (HF-style) labels end in a token id; trained as-is they would teach a copy
            if doc_labels and doc_labels[-1] != IGNORE:
                raise ValueError(f"document {doc}: the last label must be {IGNORE} (labels come "
                                 "shifted: labels[i] is the target at position i)")
            row_ids.extend(doc_ids)
            row_labels.extend(doc_labels)
            row_pos.extend(range(len(doc_ids)))
        flat_ids.append(row_ids)
        flat_labels.append(row_labels)
        flat_pos.append(row_pos)
        start += size
    width = max((len(r) for r in flat_ids), default=0)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    for row_ids, row_labels, row_pos in zip(flat_ids, flat_labels, flat_pos, strict=True):
        tail = width - len(row_ids)
        row_ids.extend([pad_id] * tail)
        row_labels.extend([IGNORE] * tail)
        row_pos.extend(range(tail))
    shape = (len(row_sizes), width)
    return {"input_ids": torch.tensor(flat_ids, dtype=torch.long).reshape(shape),
            "labels": torch.tensor(flat_labels, dtype=torch.long).reshape(shape),
            "position_ids": torch.tensor(flat_pos, dtype=torch.long).reshape(shape)}


def _vocab_size(model: Any) -> int:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "num_embeddings"):
        return int(embeddings.num_embeddings)
    return int(model.config.vocab_size)


def check_isolation(model: Any, device: torch.device | str) -> None:
    """Refuse to train packed rows when the documents in a row see each other.

    Packs random documents two per row, two rows per batch (the trainer's shape: batch > 1), runs
    the model the way the instruction task does (position_ids, no attention_mask, no cache) and
    compares every document's logits with the same document run alone. Eval mode and no_grad;
    model.training is restored; a private generator leaves the global RNG alone.
    """
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    model_type = getattr(config, "model_type", type(model).__name__)
    generator = torch.Generator().manual_seed(0)
    vocab = _vocab_size(model)
    docs = [[torch.randint(vocab, (n,), generator=generator).tolist() for n in row] for row in PROBE_ROWS]
    flat = [doc for row in docs for doc in row]
    batch = pack_columns({"input_ids": flat, "labels": [[IGNORE] * len(d) for d in flat]},
                         [len(row) for row in docs], pad_id=0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(device),
                           position_ids=batch["position_ids"].to(device), use_cache=False).logits
            atol = PROBE_ATOL if logits.dtype == torch.float32 else PROBE_ATOL_HALF
            packed = logits.float()
            worst = 0.0
            for r, row in enumerate(docs):
                start = 0
                for doc in row:
                    alone = model(input_ids=torch.tensor([doc], device=device),
                                  position_ids=torch.arange(len(doc), device=device)[None],
                                  use_cache=False).logits.float()[0]
                    # relative to the logits' scale: real models' logits reach tens, noise scales with them
                    diff = (packed[r, start : start + len(doc)] - alone).abs().max().item()
                    worst = max(worst, diff / max(1.0, alone.abs().max().item()))
                    start += len(doc)
    finally:
        model.train(was_training)
    if not worst <= atol:  # also catches NaN
        hint = " (flash attention keeps packed documents apart only with one row per batch)" \
            if impl and "flash" in impl else ""
        raise ConfigError(f"packed documents attend to each other with attn_implementation={impl} "
                          f"(model type {model_type}){hint}; use model.attn_implementation="
                          "sdpa|eager|flash_attention_2 or trainer.batching=tokens")
