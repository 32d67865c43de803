"""SQuAD v1.1 JSON files: the reader, and a seeded split by article (so one context never
lands in two splits)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sft.errors import DataError


def read_squad(path: Path) -> list[dict[str, Any]]:
    """Articles of a SQuAD-format JSON file: [{"title", "rows": [flat question rows]}], each
    row as the hub `squad` dataset has it (id, title, context, question, answers)."""
    try:
        with open(path, encoding="utf-8") as f:
            articles = json.load(f)["data"]
        return [{"title": a["title"], "rows": [
            {"id": qa["id"], "title": a["title"], "context": p["context"],
             "question": qa["question"],
             "answers": {"text": [x["text"] for x in qa["answers"]],
                         "answer_start": [x["answer_start"] for x in qa["answers"]]}}
            for p in a["paragraphs"] for qa in p["qas"]]} for a in articles]
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not SQuAD v1.1 JSON ({type(err).__name__}: {err}); expected "
                        '{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}') from err


def split_articles(articles: list[dict[str, Any]], fraction: Sequence[float],
                   seed: int) -> list[dict[str, Any]]:
    """The question rows of the articles in [fraction[0], fraction[1]) of a seeded shuffle
    of the articles, so one context never lands in two splits."""
    order = list(range(len(articles)))
    random.Random(seed).shuffle(order)
    lo, hi = (round(f * len(articles)) for f in fraction)
    return [row for i in sorted(order[lo:hi]) for row in articles[i]["rows"]]
