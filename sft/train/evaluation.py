"""Streamed evaluation: a split goes batch by batch through the task's evaluator, sharded
across ranks and merged, so every rank gets the same metrics from 1/N of the work."""

from __future__ import annotations

from pathlib import Path

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


# no_grad, not inference_mode: FSDP2 gathers parameters during these forwards, and
# inference tensors could not be updated by the training step after
@torch.no_grad()
def evaluate(task: Task, model: nn.Module, dataset: Dataset, run: RunConfig,
             dtype: torch.dtype | None, strategy: SingleProcess | None = None,
             records: Path | None = None) -> dict[str, float]:
    """Metrics of `model` on `dataset`; nothing per-example is kept beyond what the metric
    needs. Per-example records the task writes (generations) stream to `records` (jsonl),
    each rank to its own part, joined by the main process at the end."""
    rank, size = (strategy.world.rank, strategy.world.size) if strategy is not None else (0, 1)
    column = task.eval_group_column
    starts = [v == 0 for v in dataset[column]] if column and size > 1 else None
    rows = shard(len(dataset), rank, size, starts)
    if task.eval_batch_tokens:  # big-vocabulary logits (and generation): cap padded tokens
        lengths = sequence_lengths(dataset)  # and rows; batches of similar lengths
        batches = cut_by_tokens(list(rows), lengths, task.eval_batch_tokens,
                                run.trainer.eval_batch_size)
    else:
        batches = [[rows[i] for i in b] for b in epoch_batches(
            len(rows), run.trainer.eval_batch_size, 0, 0, shuffle=False)]
    real = len(batches)
    if strategy is not None and strategy.lockstep:  # sharded: forwards are collectives, so a
        # rank with fewer batches repeats one whose outputs are thrown away
        batches += [batches[-1] if batches else [0]] * (strategy.max_count(real) - real)
    # the compute device (offloaded FSDP parameters live on the host)
    device = strategy.device if strategy is not None else next(model.parameters()).device
    pad = pad_multiple(run.trainer.pad_to_multiple_of, device)
    loader = make_loader(dataset, batches, lambda columns: task.collate(columns, pad),
                         run.data.num_workers)
    was_training = model.training
    model.eval()
    evaluator = task.evaluator()
    parts = [records.with_name(f".{records.name}.part{r}") for r in range(size)] if records else []
    if parts:  # a rank may get here before rank 0 has made the run dir
        parts[rank].parent.mkdir(parents=True, exist_ok=True)
    evaluator.write_to(parts[rank] if parts else None)
    for i, batch in enumerate(loader):
        with autocast(device, dtype):
            (evaluator if i < real else task.evaluator()).update(model, to_device(batch, device))
    evaluator.write_to(None)
    model.train(was_training)
    if size > 1:  # gathering also waits for every rank's part to be written
        evaluator.merge(strategy.gather(evaluator.state()))
    if records is not None and rank == 0:
        join_parts(parts, records)
    return evaluator.compute()


def join_parts(parts: list[Path], target: Path) -> None:
    """Concatenate the ranks' parts (rank order) into `target`, replacing it atomically; a
    task that wrote no records leaves no file."""
    if not any(p.stat().st_size for p in parts):
        for part in parts:
            part.unlink()
        return
    with open(parts[0], "a") as joined:
        for part in parts[1:]:
            joined.write(part.read_text())
            part.unlink()
    parts[0].replace(target)
