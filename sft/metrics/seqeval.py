"""Entity-level scores of IOB2 tag sequences with seqeval in strict mode: the numbers CoNLL
papers report (conlleval's micro P/R/F1 over entities)."""

from __future__ import annotations

from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import IOB2


def entity_metrics(true: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Strict IOB2 entity-level precision/recall/F1 (micro over entities, as CoNLL's
    conlleval), per entity type, and word-level tag accuracy."""
    report = classification_report(true, pred, mode="strict", scheme=IOB2, output_dict=True,
                                   zero_division=0)
    micro = report["micro avg"]
    result = {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
              "f1": float(micro["f1-score"]), "accuracy": float(accuracy_score(true, pred))}
    for name, row in report.items():
        if not name.endswith(" avg"):
            result[f"f1_{name}"] = float(row["f1-score"])
            result[f"precision_{name}"] = float(row["precision"])
            result[f"recall_{name}"] = float(row["recall"])
    return result
