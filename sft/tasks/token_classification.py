"""Token classification (NER, POS, chunking): one label per word, first sub-token labelled.

Entity tag sets are scored with seqeval in strict IOB2 mode (entity-level P/R/F1 overall
and per type, the numbers CoNLL papers report) plus word accuracy; other tag sets
(`task.entity_metrics=false`, e.g. POS) are scored by word accuracy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForTokenClassification, PreTrainedModel

from sft.config.schema import ModelConfig
from sft.config.tasks import TokenClassificationConfig
from sft.data.collate import batched, pad_columns, to_device
from sft.errors import DataError
from sft.metrics.seqeval import entity_metrics
from sft.models.loading import load_labelled_model
from sft.tasks.base import IGNORE_INDEX, Counts, Evaluator, Task, cross_entropy_sum
from sft.tasks.tagging import (
    align_labels,
    document_context,
    first_subtoken_positions,
    group_entities,
    read_conll,
)

_LEFT, _RIGHT = "context_left", "context_right"  # document-context word columns
CONLL_SUFFIXES = {".txt", ".conll", ".conllu", ".iob", ".iob2", ".bio"}


class TokenClassificationEvaluator(Evaluator):
    """Keeps only the word tags of each sentence (not the logits)."""

    STATE = ("true", "pred")

    def __init__(self, task: TokenClassificationTask) -> None:
        super().__init__()
        self.task = task
        self.true: list[list[str]] = []
        self.pred: list[list[str]] = []

    def update(self, model: PreTrainedModel, batch: dict[str, Any]) -> None:
        out = self.task.forward(model, batch)
        self.add_loss(self.task.loss_sum(out, batch), self.task.counts(batch).targets)
        names = self.task.config.label_names
        best = out.logits.argmax(-1).tolist()
        for row, positions, gold in zip(best, batch["word_positions"], batch["word_labels"],
                                        strict=True):
            # words cut off by max_length (position -1) count as predicted "O"
            self.pred.append([names[row[p]] if p >= 0 else "O" for p in positions])
            self.true.append([names[t] for t in gold])

    def metrics(self) -> dict[str, float]:
        if self.task.config.entity_metrics:
            return entity_metrics(self.true, self.pred)
        pairs = [(t, p) for ts, ps in zip(self.true, self.pred, strict=True)
                 for t, p in zip(ts, ps, strict=True)]
        return {"accuracy": sum(t == p for t, p in pairs) / max(1, len(pairs))}


class TokenClassificationTask(Task):
    config_class = TokenClassificationConfig
    load_best = ('pipeline("token-classification", model="best", '
                 'aggregation_strategy="simple")')
    config: TokenClassificationConfig

    def read_file(self, path: Path, split: str) -> Dataset | None:
        if path.suffix.lower() not in CONLL_SUFFIXES:
            return None  # jsonl/json/parquet with token and tag lists: the generic reader
        c = self.config
        rows = read_conll(path, c.tag_column)
        columns = {c.tokens_column: rows["tokens"], c.tags_column: rows["tags"]}
        if c.document_context:
            columns[_LEFT], columns[_RIGHT] = document_context(
                rows["tokens"], rows["document"], c.document_context)
        return Dataset.from_dict(columns)

    def prepare_split(self, dataset: Dataset, split: str) -> Dataset:
        c = self.config
        for column in (c.tokens_column, c.tags_column):
            if column not in dataset.column_names:
                raise DataError(f"column '{column}' not found in the {split} split (columns: "
                                f"{', '.join(dataset.column_names)}); set task.tokens_column / "
                                "task.tags_column")
        if c.document_context and _LEFT not in dataset.column_names:
            raise DataError(f"task.document_context needs documents, and the {split} split "
                            "has none: use CoNLL files (-DOCSTART- marks documents) or set "
                            "task.document_context=0")
        names = list(c.label_names)
        to_id = {name: i for i, name in enumerate(names)} | {i: i for i in range(len(names))}

        def ids(rows: dict[str, list]) -> dict[str, list]:
            out = []
            for tags in rows[c.tags_column]:
                try:
                    out.append([to_id[t] for t in tags])
                except KeyError as err:
                    raise DataError(f"tag {err.args[0]!r} in the {split} split is not in "
                                    f"task.label_names {names}; fix the data or the tag set"
                                    ) from None
            return {"tag_ids": out}

        return dataset.map(ids, batched=True, desc=f"tags ({split})")

    def featurize(self, rows: dict[str, list]) -> dict[str, list]:
        sentences = rows[self.config.tokens_column]
        none: list[list[str]] = [[] for _ in sentences]
        left = rows[_LEFT] if _LEFT in rows else none
        right = rows[_RIGHT] if _RIGHT in rows else none
        enc = self.tokenizer([a + s + b for a, s, b in zip(left, sentences, right, strict=True)],
                             is_split_into_words=True, truncation=True,
                             max_length=self.data.max_length)
        labels, positions = [], []
        for i, tags in enumerate(rows["tag_ids"]):
            word_ids = enc.word_ids(i)
            start = len(left[i])  # context words are read, never labelled
            unlabelled = [IGNORE_INDEX] * start + tags + [IGNORE_INDEX] * len(right[i])
            labels.append(align_labels(word_ids, unlabelled))
            first = {word_ids[p]: p for p in first_subtoken_positions(word_ids)}
            positions.append([first.get(start + w, -1) for w in range(len(tags))])
        return {**enc, "labels": labels, "word_labels": rows["tag_ids"],
                "word_positions": positions}

    def collate(self, columns: dict[str, list], pad_to_multiple_of: int | None) -> dict[str, Any]:
        pad = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0,
               "token_type_ids": 0, "labels": IGNORE_INDEX}
        batch: dict[str, Any] = pad_columns(columns, pad, pad_to_multiple_of)
        for key in ("word_labels", "word_positions"):  # for the evaluator, kept on the host
            if key in columns:
                batch[key] = columns[key]
        return batch

    def counts(self, batch: dict[str, Any]) -> Counts:
        labelled = int((batch["labels"] != IGNORE_INDEX).sum())
        return Counts(**{**super().counts(batch).__dict__, "targets": labelled})

    def loss_sum(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        return cross_entropy_sum(outputs.logits, batch["labels"])

    def train_loss(self, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
        return cross_entropy_sum(self.forward(model, batch).logits, batch["labels"],
                                 label_smoothing=self.config.label_smoothing)

    def build_model(self, model_cfg: ModelConfig) -> PreTrainedModel:
        return load_labelled_model(AutoModelForTokenClassification, model_cfg, list(self.config.label_names))

    def evaluator(self) -> TokenClassificationEvaluator:
        return TokenClassificationEvaluator(self)

    @torch.inference_mode()
    def predict(self, model: PreTrainedModel, records: list[dict[str, Any]],
                batch_size: int) -> list[dict[str, Any]]:
        """Entities with character spans in each record's raw "text". Words are the
        tokenizer's pre-tokenized words; each takes the tag of its first sub-token."""
        if any(not isinstance(r.get("text"), str) for r in records):
            raise DataError("prediction input needs a 'text' string in every record")
        names = list(self.config.label_names)
        results: list[dict[str, Any]] = []
        for chunk in batched(records, batch_size):
            texts = [r["text"] for r in chunk]
            enc = self.tokenizer(texts, truncation=True, max_length=self.data.max_length,
                                 padding=True, return_offsets_mapping=True, return_tensors="pt")
            offsets = enc.pop("offset_mapping").tolist()
            inputs = {k: v for k, v in enc.items() if k in self.model_inputs}
            probs = self.forward(model, to_device(inputs, model.device)).logits.float().softmax(-1)
            scores, best = probs.max(-1)
            for i, text in enumerate(texts):
                word_ids = enc.word_ids(i)
                firsts = first_subtoken_positions(word_ids)
                last = {w: p for p, w in enumerate(word_ids) if w is not None}
                tags = [names[int(best[i, p])] for p in firsts]
                spans = [(offsets[i][p][0], offsets[i][last[word_ids[p]]][1]) for p in firsts]
                results.append({"entities": group_entities(
                    tags, spans, [float(scores[i, p]) for p in firsts], text)})
        return results
