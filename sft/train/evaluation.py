"""Streamed evaluation: a split goes batch by batch through the task's evaluator, sharded
across DDP ranks and merged, so every rank gets the same metrics from 1/N of the work."""

from __future__ import annotations

import torch
from datasets import Dataset
from torch import nn

from sft.config.schema import RunConfig
from sft.data.collate import to_device
from sft.data.features import sequence_lengths
from sft.parallel.device import autocast, pad_multiple
from sft.parallel.strategies import SingleProcess
from sft.tasks.base import Task
from sft.train.sampling import cut_by_tokens, epoch_batches, make_loader, shard


@torch.inference_mode()
def evaluate(task: Task, model: nn.Module, dataset: Dataset, run: RunConfig,
             dtype: torch.dtype | None, strategy: SingleProcess | None = None) -> dict[str, float]:
    """Metrics of `model` on `dataset`; nothing per-example is kept beyond what the metric
    needs."""
    rank, size = (strategy.world.rank, strategy.world.size) if strategy is not None else (0, 1)
    column = task.eval_group_column
    starts = [v == 0 for v in dataset[column]] if column and size > 1 else None
    rows = shard(len(dataset), rank, size, starts)
    if task.eval_batch_tokens:  # big-vocabulary logits: cap the padded tokens per batch
        lengths = sequence_lengths(dataset)
        batches = cut_by_tokens(list(rows), lengths, task.eval_batch_tokens)
    else:
        batches = [[rows[i] for i in b] for b in epoch_batches(
            len(rows), run.trainer.eval_batch_size, 0, 0, shuffle=False)]
    device = next(model.parameters()).device
    pad = pad_multiple(run.trainer.pad_to_multiple_of, device)
    loader = make_loader(dataset, batches, lambda columns: task.collate(columns, pad),
                         run.data.num_workers)
    was_training = model.training
    model.eval()
    evaluator = task.evaluator()
    for batch in loader:
        with autocast(device, dtype):
            evaluator.update(model, to_device(batch, device))
    model.train(was_training)
    if size > 1:
        evaluator.merge(strategy.gather(evaluator.state()))
    return evaluator.compute()
