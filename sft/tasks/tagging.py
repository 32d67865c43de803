"""Pure helpers of token classification: the CoNLL reader, document context, word-to-sub-token
label alignment, and grouping word tags into entities."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sft.errors import DataError
from sft.tasks.base import IGNORE_INDEX


def read_conll(path: Path, tag_column: int = -1) -> dict[str, list]:
    """Sentences of a CoNLL column file as {"tokens": [[...]], "tags": [[...]],
    "document": [...]} (the document index of each sentence).

    One token per line with space-separated columns (token first); blank lines end a
    sentence; `-DOCSTART-` lines start a new document and are not tokens; a missing trailing
    blank line still closes the last sentence.
    """
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    documents: list[int] = []
    words: list[str] = []
    labels: list[str] = []
    document = 0

    def close() -> None:
        if words:
            tokens.append(list(words))
            tags.append(list(labels))
            documents.append(document)
            words.clear()
            labels.clear()

    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            columns = line.split()
            if not columns:
                close()
                continue
            if columns[0] == "-DOCSTART-":
                close()
                document += 1
                continue
            try:
                labels.append(columns[tag_column])
            except IndexError:
                raise DataError(f"{path}:{number}: has {len(columns)} columns, task.tag_column="
                                f"{tag_column} is out of range; fix the file or task.tag_column"
                                ) from None
            words.append(columns[0])
    close()
    return {"tokens": tokens, "tags": tags, "document": documents}


def document_context(sentences: Sequence[Sequence[str]], documents: Sequence[int],
                     size: int) -> tuple[list[list[str]], list[list[str]]]:
    """Up to `size` words before and after each sentence from the neighbouring sentences of
    its document (FLERT, Schweter & Akbik 2020): the model reads them, the loss and the
    metrics do not."""
    left: list[list[str]] = []
    right: list[list[str]] = []
    for i in range(len(sentences)):
        before: list[str] = []
        j = i - 1
        while len(before) < size and j >= 0 and documents[j] == documents[i]:
            before = [*sentences[j], *before]
            j -= 1
        after: list[str] = []
        j = i + 1
        while len(after) < size and j < len(sentences) and documents[j] == documents[i]:
            after = [*after, *sentences[j]]
            j += 1
        left.append(before[max(0, len(before) - size):])
        right.append(after[:size])
    return left, right


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Label of each sub-token: the word's label on its first sub-token, IGNORE_INDEX on
    later sub-tokens and special tokens (so the loss and metrics see each word once)."""
    aligned = []
    previous = None
    for word in word_ids:
        aligned.append(IGNORE_INDEX if word is None or word == previous else word_labels[word])
        previous = word
    return aligned


def first_subtoken_positions(word_ids: Sequence[int | None]) -> list[int]:
    """Token index of each word's first sub-token, in word order."""
    positions, previous = [], None
    for index, word in enumerate(word_ids):
        if word is not None and word != previous:
            positions.append(index)
        previous = word
    return positions


def group_entities(tags: Sequence[str], spans: Sequence[tuple[int, int]],
                   scores: Sequence[float], text: str) -> list[dict[str, Any]]:
    """Merge word tags into entities: B-X starts one, I-X continues an X (a stray I-X starts
    one, as the `simple` aggregation of transformers' pipeline does). `spans` are the
    words' character spans in `text`; the score is the mean of the words' scores."""
    entities: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for tag, (start, end), score in zip(tags, spans, scores, strict=True):
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and current is not None and current["entity_group"] == kind:
            current["end"] = end
            current["scores"].append(score)
            continue
        current = None
        if prefix in {"B", "I"} and kind:
            current = {"entity_group": kind, "start": start, "end": end, "scores": [score]}
            entities.append(current)
    for entity in entities:
        scores_ = entity.pop("scores")
        entity["score"] = sum(scores_) / len(scores_)
        entity["word"] = text[entity["start"] : entity["end"]]
    return [{k: e[k] for k in ("entity_group", "word", "start", "end", "score")} for e in entities]
