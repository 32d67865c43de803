"""Extractive QA spans: sliding windows with labelled answer positions, and the standard
n-best start/end post-processing back to context characters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Span = tuple[float, int, int]  # (score, start_char, end_char)


def window_positions(offsets: Sequence[Sequence[int]], sequence_ids: Sequence[int | None],
                     answer_start: int | None, answer_text: str | None) -> dict[str, Any]:
    """One window's context token range and its answer's token positions.

    `context_start` is the window's first context token and `offsets` the character
    spans of its context tokens. An answer not wholly inside the window (or none, when
    predicting) is labelled at position 0, the CLS token, as in the BERT paper.
    """
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    first, last = context[0], context[-1]
    start = end = 0
    if answer_start is not None and answer_text is not None:
        answer_end = answer_start + len(answer_text)
        if offsets[first][0] <= answer_start and offsets[last][1] >= answer_end:
            start = first
            while start <= last and offsets[start][1] <= answer_start:
                start += 1
            end = last
            while end >= first and offsets[end][0] >= answer_end:
                end -= 1
    return {"context_start": first, "offsets": [list(o) for o in offsets[first : last + 1]],
            "start_positions": start, "end_positions": end}


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, context_start: int,
              offsets: Sequence[Sequence[int]], n_best: int,
              max_answer_length: int) -> Span | None:
    """(score, start_char, end_char) of the best valid span of one window: among the
    n_best start and n_best end tokens inside the context, end >= start and at most
    max_answer_length tokens; score = start logit + end logit. None if no span is valid."""
    n = len(offsets)
    starts = start_logits[context_start : context_start + n].float()
    ends = end_logits[context_start : context_start + n].float()
    top_starts = starts.topk(min(n_best, n)).indices.tolist()
    top_ends = ends.topk(min(n_best, n)).indices.tolist()
    best: Span | None = None
    for s in top_starts:
        for e in top_ends:
            if e < s or e - s + 1 > max_answer_length:
                continue
            score = float(starts[s] + ends[e])
            best = higher((score, offsets[s][0], offsets[e][1]), best)
    return best


def higher(span: Span | None, best: Span | None) -> Span | None:
    """The higher-scoring of a candidate span and the best so far (a tie keeps the best so
    far: the earlier candidate or window)."""
    if span is None or (best is not None and span[0] <= best[0]):
        return best
    return span
