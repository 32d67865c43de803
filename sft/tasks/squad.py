"""SQuAD v1.1: the official EM/F1 definitions and the JSON reader with an article split.

normalize_answer / exact_match_score / f1_score / metric_max_over_ground_truths follow the
official evaluate-v1.1.py line for line, so scores match the leaderboard's scorer.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sft.errors import DataError


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def f1_score(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn: Callable[[str, str], float], prediction: str,
                                  ground_truths: Sequence[str]) -> float:
    return max(metric_fn(prediction, truth) for truth in ground_truths)


class SquadScorer:
    """Running sums of EM and F1 (each the max over an example's reference answers),
    reported in percent as the official script does."""

    def __init__(self) -> None:
        self.exact = self.f1 = 0.0
        self.count = 0

    def add(self, prediction: str, references: Sequence[str]) -> None:
        self.exact += metric_max_over_ground_truths(exact_match_score, prediction, references)
        self.f1 += metric_max_over_ground_truths(f1_score, prediction, references)
        self.count += 1

    def result(self) -> dict[str, float]:
        n = max(1, self.count)
        return {"exact_match": 100.0 * self.exact / n, "f1": 100.0 * self.f1 / n}


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
