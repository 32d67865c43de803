"""Classification scores with scikit-learn: accuracy, macro-F1, Matthews correlation."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def classification_metrics(labels: Sequence[int], preds: Sequence[int]) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "f1_macro": float(f1_score(labels, preds, average="macro")),
        "mcc": float(matthews_corrcoef(labels, preds)),
    }
