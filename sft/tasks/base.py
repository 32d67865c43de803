"""The task plug-in contract shared by every task family.

A task turns raw rows into features, features into batches, batches into a loss, and
model outputs into metrics and predictions. The trainer knows nothing else about tasks:

    featurize(rows) -> features          (run once through datasets.map and cached)
    collate(columns) -> batch            (columnar dict of lists -> tensors)
    loss(model, batch) -> scalar tensor
    evaluator() -> Evaluator             (update(model, batch) streaming; compute() -> dict)
    predict(model, records) -> list[dict]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.config import DataConfig, ModelConfig
from sft.errors import ConfigError

IGNORE_INDEX = -100  # label value the loss skips (padding, non-first sub-tokens, prompts)


@dataclass(frozen=True)
class HubDataset:
    path: str | None = None  # e.g. "stanfordnlp/sst2"
    name: str | None = None  # configuration name
    splits: dict[str, str] = field(default_factory=dict)  # our split -> hub split


@dataclass(frozen=True)
class TaskConfig:
    """Fields every task family has; families subclass this with their own."""

    name: str = "task"
    type: str = "classification"
    hub: HubDataset = field(default_factory=HubDataset)
    subdir: str = ""  # folder under data.dir holding this task's files
    files: dict[str, str] = field(default_factory=dict)  # split -> file name (local mode)
    metric: str = "accuracy"  # the metric that picks the best checkpoint
    greater_is_better: bool = True

    def validate(self) -> None:
        if not self.files and not self.hub.path:
            raise ConfigError(f"task '{self.name}' names neither task.files nor task.hub.path")
        if self.files and "train" not in self.files:
            raise ConfigError(f"task.files has no 'train' entry (has: {sorted(self.files)})")


class Evaluator:
    """Streams over evaluation batches, keeping only what the metrics need."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.loss_count = 0

    def add_loss(self, loss: torch.Tensor, n: int) -> None:
        self.loss_sum += float(loss) * n
        self.loss_count += n

    def update(self, model: PreTrainedModel, batch: dict[str, Any]) -> None:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        result = self.metrics()
        if self.loss_count:
            result["loss"] = self.loss_sum / self.loss_count
        return result


class Task:
    """Base class of task plug-ins; `config_class` is the schema of `task:` in the config."""

    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    # how a user loads best/ outside sft, for the model card (`best` is the folder)
    load_best: ClassVar[str] = ""
    # columns the model's forward takes; everything else in a batch is for metrics
    model_inputs: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, config: TaskConfig, tokenizer: PreTrainedTokenizerBase, data: DataConfig):
        self.config = config
        self.tokenizer = tokenizer
        self.data = data

    # -- data --------------------------------------------------------------------------
    def read_file(self, path: Path, split: str) -> Any:
        """Load one local file as a datasets.Dataset; None means: use the generic reader."""
        return None

    def prepare_split(self, dataset: Any, split: str) -> Any:
        """Check columns and labels of a raw split; may rename or cast. Returns the split."""
        return dataset

    def featurize(self, rows: dict[str, list]) -> dict[str, list]:
        raise NotImplementedError

    def feature_columns(self) -> list[str] | None:
        """Raw columns to keep next to the features (None: drop all raw columns)."""
        return None

    def collate(self, columns: dict[str, list], pad_to_multiple_of: int | None) -> dict[str, Any]:
        raise NotImplementedError

    # -- model -------------------------------------------------------------------------
    def build_model(self, model_cfg: ModelConfig) -> PreTrainedModel:
        raise NotImplementedError

    def forward(self, model: PreTrainedModel, batch: dict[str, Any]) -> Any:
        return model(**{k: v for k, v in batch.items() if k in self.model_inputs or k == "labels"})

    def loss(self, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
        return self.forward(model, batch).loss

    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    def predict(self, model: PreTrainedModel, records: list[dict[str, Any]],
                batch_size: int) -> list[dict[str, Any]]:
        raise NotImplementedError


def pad_columns(columns: dict[str, list], pad_values: dict[str, int],
                multiple: int | None) -> dict[str, torch.Tensor]:
    """Pad the ragged list columns named in pad_values to one length (rounded up to
    `multiple`, which keeps matmul shapes friendly) and stack them as tensors."""
    out: dict[str, torch.Tensor] = {}
    lengths = [len(x) for x in next(iter(columns[k] for k in pad_values if k in columns))]
    width = max(lengths)
    if multiple:
        width = -(-width // multiple) * multiple
    for key, value in pad_values.items():
        if key not in columns:
            continue
        rows = columns[key]
        tensor = torch.full((len(rows), width), value, dtype=torch.long)
        for i, row in enumerate(rows):
            tensor[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        out[key] = tensor
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def batched(items: list, size: int) -> Any:
    for start in range(0, len(items), size):
        yield items[start : start + size]
