"""SQuAD v1.1: the official EM/F1 definitions.

normalize_answer / exact_match_score / f1_score / metric_max_over_ground_truths follow the
official evaluate-v1.1.py line for line, so scores match the leaderboard's scorer.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence


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

    def sums(self) -> tuple[float, float, int]:
        return self.exact, self.f1, self.count

    @classmethod
    def merged(cls, sums: list[tuple[float, float, int]]) -> SquadScorer:
        """One scorer over the examples of several (e.g. one per rank)."""
        scorer = cls()
        for exact, f1, count in sums:
            scorer.exact, scorer.f1, scorer.count = (scorer.exact + exact, scorer.f1 + f1,
                                                     scorer.count + count)
        return scorer

    def result(self) -> dict[str, float]:
        n = max(1, self.count)
        return {"exact_match": 100.0 * self.exact / n, "f1": 100.0 * self.f1 / n}
