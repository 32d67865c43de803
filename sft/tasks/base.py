"""The task plug-in contract shared by every task family.

A task turns raw rows into features, features into batches, batches into a loss, and
model outputs into metrics and predictions. The trainer knows nothing else about tasks:

    featurize(rows) -> features          (run once through datasets.map and cached)
    collate(columns) -> batch            (columnar dict of lists -> tensors)
    collate_packed(columns, row_sizes)   (trainer.batching=packed: documents side by side)
    counts(batch) -> Counts              (examples, real tokens, loss targets; no forward)
    loss(model, batch) -> loss sum       (summed over the batch's targets: the trainer divides
                                          by the targets of the whole step, on every rank)
    train_loss(model, batch) -> loss sum (what the trainer minimizes: loss() with the training-
                                          only terms, task.label_smoothing / class_weights;
                                          evaluation reports the plain loss)
    prepare_training(train features)     (statistics of the training split the loss needs)
    evaluator() -> Evaluator             (update(model, batch) streaming; state/merge across
                                          ranks; compute() -> dict)
    predict(model, records) -> list[dict]
    preview(features) -> str | None      (what the loss sees, written to the run dir)
    samples(model) -> list[dict]         (generations at each evaluation: samples.jsonl)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TextIO

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.config.schema import DataConfig, ModelConfig, TaskConfig

IGNORE_INDEX = -100  # label value the loss skips (padding, non-first sub-tokens, prompts)


@dataclass(frozen=True)
class Counts:
    """What one batch holds, counted on the host before the forward pass."""

    examples: int
    tokens: int  # real (non-padding) input tokens
    targets: int  # terms in the loss sum: examples, labelled tokens, ...
    positions: int = 0  # input positions the model computes, padding included


class Evaluator:
    """Streams over evaluation batches, keeping only what the metrics need.

    `STATE` names the attributes that hold that (lists are concatenated and numbers added
    when the ranks' shards are merged), so evaluation is split across DDP ranks and every
    rank computes the same metrics from the merged state."""

    STATE: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.loss_targets = 0
        self.records: TextIO | None = None  # per-example outputs (see write_to)

    def write_to(self, path: Path | None) -> None:
        """Stream per-example records (generative tasks: source, references, prediction) to
        `path` as jsonl while evaluating; None writes nothing."""
        if self.records is not None:
            self.records.close()
        self.records = open(path, "w") if path is not None else None  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self.records is not None:
            self.records.write(json.dumps(record, ensure_ascii=False) + "\n")

    def add_loss(self, loss_sum: torch.Tensor, targets: int) -> None:
        self.loss_sum += float(loss_sum)
        self.loss_targets += targets

    def update(self, model: PreTrainedModel, batch: dict[str, Any]) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("loss_sum", "loss_targets", *self.STATE)}

    def merge(self, states: list[dict[str, Any]]) -> None:
        """Replace this evaluator's state by the union of `states` (one per rank, in order)."""
        for name in states[0]:
            values = [s[name] for s in states]
            setattr(self, name, sum(values, []) if isinstance(values[0], list) else sum(values))

    def metrics(self) -> dict[str, float]:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        result = self.metrics()
        if self.loss_targets:
            result["loss"] = self.loss_sum / self.loss_targets  # per-target mean
        return result


class Task:
    """Base class of task plug-ins; `config_class` is the schema of `task:` in the config."""

    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    # bump when featurize() changes its output: the feature cache key includes it
    features_version: ClassVar[int] = 1
    # how a user loads best/ outside sft, for the model card (`best` is the folder)
    load_best: ClassVar[str] = ""
    # columns the model's forward takes; everything else in a batch is for loss and metrics
    model_inputs: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "token_type_ids")
    # a feature column whose value 0 starts a group of rows that must be evaluated together
    # (QA windows of one example); evaluation shards across ranks only at such rows
    eval_group_column: ClassVar[str | None] = None
    # evaluation batches hold at most this many padded tokens (None: trainer.eval_batch_size
    # examples); language models set it, since their logits are tokens x vocabulary
    eval_batch_tokens: ClassVar[int | None] = None

    def __init__(self, config: TaskConfig, tokenizer: PreTrainedTokenizerBase, data: DataConfig,
                 model: ModelConfig | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.data = data

    def batchings(self) -> tuple[str, ...]:
        """The trainer.batching values this task takes with this model."""
        return self.config.BATCHINGS

    def signatures(self) -> dict[str, str]:
        """How the metrics were computed, for metrics.json (e.g. sacreBLEU's signature)."""
        return {}

    # -- data --------------------------------------------------------------------------
    def read_file(self, path: Path, split: str) -> Dataset | None:
        """Load one local file as a datasets.Dataset; None means: use the generic reader."""
        return None

    def prepare_split(self, dataset: Dataset, split: str) -> Dataset:
        """Check columns and labels of a raw split; may rename or cast. Returns the split."""
        return dataset

    def featurize(self, rows: dict[str, list]) -> dict[str, list]:
        raise NotImplementedError

    def feature_columns(self) -> list[str] | None:
        """Raw columns to keep next to the features (None: drop all raw columns)."""
        return None

    def features_depend_on(self) -> Any:
        """What featurize() reads besides the task config, tokenizer and data settings (part
        of the feature cache key; JSON-serializable)."""
        return None

    def collate(self, columns: dict[str, list], pad_to_multiple_of: int | None) -> dict[str, Any]:
        raise NotImplementedError

    def collate_packed(self, columns: dict[str, list], row_sizes: list[int],
                       pad_to_multiple_of: int | None) -> dict[str, Any]:
        """Rows of documents side by side (only families whose config takes `packed`)."""
        raise NotImplementedError

    def preview(self, dataset: Dataset) -> str | None:
        """A human-readable view of the first training features (None: nothing to show)."""
        return None

    def counts(self, batch: dict[str, Any]) -> Counts:
        """Examples and real tokens of a collated batch; one loss target per example."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else ids.numel()
        return Counts(examples=len(ids), tokens=tokens, targets=len(ids), positions=ids.numel())

    # -- model -------------------------------------------------------------------------
    def build_model(self, model_cfg: ModelConfig) -> PreTrainedModel:
        raise NotImplementedError

    def forward(self, model: PreTrainedModel, batch: dict[str, Any]) -> Any:
        """The model's outputs (logits); the loss is ours (see loss_sum), not the model's."""
        return model(**{k: v for k, v in batch.items() if k in self.model_inputs})

    def loss_sum(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        """The sum of the batch's per-target losses (fp32)."""
        raise NotImplementedError

    def loss(self, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_sum(self.forward(model, batch), batch)

    def train_loss(self, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
        """The sum the trainer minimizes; families with a cross-entropy over labels add
        task.label_smoothing (and class weights) here, so evaluation's loss stays plain."""
        return self.loss(model, batch)

    def prepare_training(self, train: Dataset) -> None:
        """Called by the trainer with the training features before the first step (e.g.
        balanced class weights); nothing by default."""

    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    def predict(self, model: PreTrainedModel, records: list[dict[str, Any]],
                batch_size: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def samples(self, model: PreTrainedModel) -> list[dict[str, Any]]:
        """Outputs a user reads at each evaluation to see the model change (generative
        families); the trainer writes them to samples.jsonl with the step."""
        return []


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy over every label that is not `ignore_index`, in fp32, with torch's
    label smoothing and class weights: sum_i w_{y_i} ce_i, not torch's weighted mean (which
    divides by sum_i w_{y_i}), since the trainer divides by the step's number of targets."""
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, -2), labels.flatten(),
                                             weight=weight, ignore_index=ignore_index,
                                             reduction="sum", label_smoothing=label_smoothing)
