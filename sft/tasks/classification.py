"""Sequence classification (sentiment, topic, NLI pairs): accuracy and macro-F1."""

from __future__ import annotations

import logging
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from sft.config.schema import ModelConfig
from sft.config.tasks import ClassificationConfig
from sft.data.collate import batched, pad_columns, to_device
from sft.errors import DataError
from sft.metrics.classification import classification_metrics
from sft.models.cls_only import restrict_last_layer_to_cls
from sft.models.loading import load_labelled_model
from sft.tasks.base import Evaluator, Task, cross_entropy_sum

log = logging.getLogger("sft")


class ClassificationEvaluator(Evaluator):
    STATE = ("preds", "labels")

    def __init__(self, task: ClassificationTask) -> None:
        super().__init__()
        self.task = task
        self.preds: list[int] = []
        self.labels: list[int] = []

    def update(self, model: PreTrainedModel, batch: dict[str, Any]) -> None:
        out = self.task.forward(model, batch)
        self.add_loss(self.task.loss_sum(out, batch), len(batch["labels"]))
        self.preds += out.logits.argmax(-1).tolist()
        self.labels += batch["labels"].tolist()

    def metrics(self) -> dict[str, float]:
        return classification_metrics(self.labels, self.preds)


def class_weights(config: ClassificationConfig, train: Dataset) -> torch.Tensor | None:
    """task.class_weights as one weight per label id: a list as given; `balanced` as
    scikit-learn's compute_class_weight, n_samples / (n_classes * count) over the training
    split, whose mean over the training examples is then 1."""
    if config.class_weights is None:
        return None
    if config.class_weights != "balanced":
        return torch.tensor(config.class_weights, dtype=torch.float)
    labels = torch.tensor(train.select_columns(["labels"]).with_format("numpy")[:]["labels"])
    counts = torch.bincount(labels, minlength=len(config.label_names))
    missing = [n for n, c in zip(config.label_names, counts.tolist(), strict=True) if c == 0]
    if missing:
        raise DataError(f"task.class_weights=balanced: label(s) {missing} never occur in the "
                        "train split; give task.class_weights as a list, one weight per label")
    return len(labels) / (len(counts) * counts.float())


class ClassificationTask(Task):
    config_class = ClassificationConfig
    load_best = 'pipeline("text-classification", model="best")'
    config: ClassificationConfig
    class_weights: torch.Tensor | None = None  # per label id (prepare_training)

    def _text_columns(self) -> list[str]:
        c = self.config
        return [c.text_column] + ([c.text_pair_column] if c.text_pair_column else [])

    def prepare_split(self, dataset: Dataset, split: str) -> Dataset:
        c = self.config
        for column in [*self._text_columns(), c.label_column]:
            if column not in dataset.column_names:
                raise DataError(
                    f"column '{column}' not found in the {split} split (columns: "
                    f"{', '.join(dataset.column_names)}); set task.text_column / "
                    "task.label_column to the right names"
                )
        to_id = self._label_ids(set(dataset.unique(c.label_column)), split)
        return dataset.map(lambda rows: {"labels": [to_id[v] for v in rows[c.label_column]]},
                           batched=True, desc=f"labels ({split})")

    def _label_ids(self, values: set, split: str) -> dict[Any, int]:
        names = list(self.config.label_names)
        to_id: dict[Any, int] = {}
        for value in values:
            if isinstance(value, str) and value in names:
                to_id[value] = names.index(value)
            elif isinstance(value, (int, str)) and str(value).lstrip("-").isdigit() \
                    and 0 <= int(value) < len(names):
                to_id[value] = int(value)
            else:
                raise DataError(
                    f"label {value!r} in the {split} split is outside the label set {names} "
                    "(ids 0..{}); fix the data or task.label_names".format(len(names) - 1)
                )
        return to_id

    def featurize(self, rows: dict[str, list]) -> dict[str, list]:
        texts = [rows[column] for column in self._text_columns()]
        features = self.tokenizer(*texts, truncation=True, max_length=self.data.max_length)
        return {**features, "labels": rows["labels"]}

    def collate(self, columns: dict[str, list], pad_to_multiple_of: int | None) -> dict[str, Any]:
        pad = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        batch: dict[str, Any] = pad_columns(columns, pad, pad_to_multiple_of)
        if "labels" in columns:
            batch["labels"] = torch.as_tensor(columns["labels"], dtype=torch.long)
        return batch

    def loss_sum(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        return cross_entropy_sum(outputs.logits, batch["labels"])

    def prepare_training(self, train: Dataset) -> None:
        self.class_weights = class_weights(self.config, train)
        if self.class_weights is not None:
            log.info("task.class_weights=%s: %s", self.config.class_weights, ", ".join(
                f"{n} {w:.4g}" for n, w in zip(self.config.label_names,
                                                self.class_weights.tolist(), strict=True)))

    def train_loss(self, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
        logits = self.forward(model, batch).logits
        weights = self.class_weights
        if weights is not None and weights.device != logits.device:
            weights = self.class_weights = weights.to(logits.device)
        return cross_entropy_sum(logits, batch["labels"],
                                 label_smoothing=self.config.label_smoothing, weight=weights)

    def build_model(self, model_cfg: ModelConfig) -> PreTrainedModel:
        model = load_labelled_model(AutoModelForSequenceClassification, model_cfg,
                                    list(self.config.label_names))
        if self.config.cls_only_last_layer and not restrict_last_layer_to_cls(model):
            log.info("task.cls_only_last_layer: not supported for model type %s; computing "
                     "every token", model.config.model_type)
        return model

    def evaluator(self) -> ClassificationEvaluator:
        return ClassificationEvaluator(self)

    @torch.inference_mode()
    def predict(self, model: PreTrainedModel, records: list[dict[str, Any]],
                batch_size: int) -> list[dict[str, Any]]:
        columns = self._text_columns()
        for column in columns:
            if any(column not in r for r in records):
                raise DataError(f"prediction input needs a '{column}' field in every record")
        names = list(self.config.label_names)
        results: list[dict[str, Any]] = []
        for chunk in batched(records, batch_size):
            rows = {c: [r[c] for r in chunk] for c in columns}
            enc = self.tokenizer(*rows.values(), truncation=True,
                                 max_length=self.data.max_length, padding=True,
                                 return_tensors="pt")
            logits = self.forward(model, to_device(dict(enc), model.device)).logits
            for p in logits.float().softmax(-1).tolist():
                best = max(range(len(p)), key=p.__getitem__)
                results.append({"label": names[best], "score": p[best],
                                "scores": dict(zip(names, p, strict=True))})
        return results
