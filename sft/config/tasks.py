"""The config schema of each task family, keyed by `task.type`.

Schemas live here, beside the run schema, so composing and validating a config never imports
the task plug-ins (sft.tasks), which name their schema with `config_class`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from sft.config.schema import TaskConfig
from sft.errors import ConfigError


@dataclass(frozen=True)
class ClassificationConfig(TaskConfig):
    METRICS: ClassVar[dict[str, bool]] = {"accuracy": True, "f1_macro": True, "mcc": True}

    type: str = "classification"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: list[str] = field(default_factory=list)
    # the head reads only the first token, so the last layer computes only that token
    # (same outputs and gradients, less compute; BERT-style models, see sft.models.cls_only)
    cls_only_last_layer: bool = True

    def validate(self) -> None:
        super().validate()
        if len(self.label_names) < 2:
            raise ConfigError(f"task.label_names needs at least 2 names, got {self.label_names}")


@dataclass(frozen=True)
class TokenClassificationConfig(TaskConfig):
    METRICS: ClassVar[dict[str, bool]] = {"accuracy": True}
    ENTITY_METRICS: ClassVar[tuple[str, ...]] = ("precision", "recall", "f1")

    type: str = "token_classification"
    tokens_column: str = "tokens"  # list of words per row
    tags_column: str = "tags"  # list of tags (names or ids into label_names) per row
    tag_column: int = -1  # CoNLL files: the column that holds the tag (-1: the last)
    label_names: list[str] = field(default_factory=list)
    entity_metrics: bool = True  # IOB2 entity P/R/F1 (seqeval strict); false: accuracy only
    # words of the neighbouring sentences of the same document read on each side of a
    # sentence (CoNLL files, whose -DOCSTART- lines mark documents); 0: the sentence alone
    document_context: int = 0
    metric: str = "f1"

    def metrics(self) -> dict[str, bool]:
        found = super().metrics()
        if self.entity_metrics:
            types = sorted({name[2:] for name in self.label_names if name[:2] in {"B-", "I-"}})
            found |= {f"{m}{suffix}": True for m in self.ENTITY_METRICS
                      for suffix in ["", *(f"_{t}" for t in types)]}
        return found

    def validate(self) -> None:
        super().validate()
        if not self.label_names:
            raise ConfigError("task.label_names is empty; list the tag set (e.g. [O, B-PER, I-PER])")
        if self.entity_metrics:
            bad = [n for n in self.label_names if n != "O" and n[:2] not in {"B-", "I-"}]
            if bad:
                raise ConfigError(f"task.label_names {bad} are not IOB2 tags (O, B-X, I-X); "
                                  "set task.entity_metrics=false for non-entity tag sets")
        if self.document_context < 0:
            raise ConfigError(f"task.document_context must be >= 0 words, got "
                              f"{self.document_context}")


@dataclass(frozen=True)
class QuestionAnsweringConfig(TaskConfig):
    METRICS: ClassVar[dict[str, bool]] = {"exact_match": True, "f1": True}

    type: str = "qa"
    id_column: str = "id"
    question_column: str = "question"
    context_column: str = "context"
    answers_column: str = "answers"  # {"text": [...], "answer_start": [...]} as hub `squad`
    doc_stride: int = 128  # tokens shared by consecutive windows of a long context
    max_answer_length: int = 30  # in tokens
    n_best: int = 20  # start and end candidates per window
    # local SQuAD JSON: split -> [from, to) fraction of the articles, shuffled with
    # article_seed (so one file can give disjoint train and validation articles)
    article_split: dict[str, list[float]] = field(default_factory=dict)
    article_seed: int = 42
    metric: str = "f1"

    def validate(self) -> None:
        super().validate()
        for name in ("doc_stride", "max_answer_length", "n_best"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task.{name} must be >= 1, got {getattr(self, name)}")
        for split, span in self.article_split.items():
            if len(span) != 2 or not 0 <= span[0] < span[1] <= 1:
                raise ConfigError(f"task.article_split.{split} must be [from, to) with "
                                  f"0 <= from < to <= 1, got {span}")


TASK_SCHEMAS: dict[str, type[TaskConfig]] = {
    "classification": ClassificationConfig,
    "token_classification": TokenClassificationConfig,
    "qa": QuestionAnsweringConfig,
}


def task_schema(task_type: str | None) -> type[TaskConfig]:
    if task_type not in TASK_SCHEMAS:
        raise ConfigError(f"unknown task.type '{task_type}'; known types: {', '.join(TASK_SCHEMAS)}")
    return TASK_SCHEMAS[task_type]
