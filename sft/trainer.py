"""The one training loop, on plain PyTorch.

Trainer(run, task, model, tokenizer, features, run_dir).fit() trains and returns the final
metrics. Every feature is a config flag:

- length: `trainer.epochs`, or `trainer.max_steps` (> 0 wins); one step = one optimizer update
- `trainer.batch_size` x `trainer.grad_accum` micro-batches per step; `trainer.max_grad_norm`
- LR: `optimizer` (param groups, no decay on bias/norms, `layer_decay`) and `scheduler` (warmup)
- evaluation every `trainer.eval_steps` (default: each epoch end) and at the end, streamed
  batch by batch through the task's evaluator; `trainer.metric` picks best/,
  `trainer.early_stopping_patience` stops after that many evaluations without improvement
- checkpoints every `trainer.save_steps` (default: at each evaluation), `trainer.keep_last`;
  a checkpoint holds everything the loop depends on (weights, optimizer, scheduler, scaler,
  RNG states, step, the partial logging window, the metrics.jsonl offset), so `resume_from`
  continues bit-identically; SIGINT/SIGTERM finish the step, save and raise TrainingInterrupted
- `hardware.precision` autocast (bf16/fp16 with a grad scaler), `hardware.compile`
- dynamic padding to `trainer.pad_to_multiple_of` (null: 8 on GPU, none on CPU),
  `trainer.group_by_length` (batches of similar lengths), fused AdamW (`optimizer.fused`);
  the loss is read back to the host only every `trainer.log_steps` steps, so the hot loop
  never waits on the device
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft import checkpoint
from sft.config import RunConfig
from sft.data import sequence_lengths
from sft.distributed import World, mean_across_ranks
from sft.errors import DataError
from sft.hardware import autocast, autocast_dtype, pad_multiple, resolve_device
from sft.interrupt import StopOnSignals, TrainingInterrupted
from sft.optim import build_optimizer, build_scheduler
from sft.rundir import RunDir
from sft.sampling import epoch_batches
from sft.seeding import rng_state, set_rng_state
from sft.tasks.base import Task, to_device

log = logging.getLogger("sft")


def make_loader(task: Task, dataset: Dataset, batches: list[list[int]], pad: int | None,
                num_workers: int, seed: int = 0) -> DataLoader:
    """Each sampler item is a whole batch of indices, fetched columnar in one read.

    The loader gets its own generator: without one, every new iterator draws its workers'
    base seed from the global torch RNG, so an evaluation or a resume would shift the
    dropout masks of the following training steps."""
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=num_workers,
                      collate_fn=lambda columns: task.collate(columns, pad),
                      generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def evaluate(task: Task, model: PreTrainedModel, dataset: Dataset, run: RunConfig,
             dtype: torch.dtype | None) -> dict[str, float]:
    """Stream a split through the task's evaluator in sequential batches; nothing
    per-example is kept beyond what the metric needs."""
    t = run.trainer
    batches = epoch_batches(len(dataset), t.eval_batch_size, 0, 0, shuffle=False)
    device = next(model.parameters()).device
    loader = make_loader(task, dataset, batches, pad_multiple(t.pad_to_multiple_of, device),
                         run.data.num_workers)
    was_training = model.training
    model.eval()
    evaluator = task.evaluator()
    for batch in loader:
        with autocast(device, dtype):
            evaluator.update(model, to_device(batch, device))
    model.train(was_training)
    return evaluator.compute()


def check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        from sft.errors import TrainingError

        raise TrainingError(f"training loss is {loss} at step {step}: the run diverged; lower "
                            "optimizer.lr or raise scheduler.warmup (with fp16: bf16 or fp32)")


class Trainer:
    def __init__(self, run: RunConfig, task: Task, model: PreTrainedModel,
                 tokenizer: PreTrainedTokenizerBase, features: DatasetDict, run_dir: RunDir,
                 console: Console | None = None, world: World | None = None) -> None:
        self.run, self.task, self.tokenizer, self.features = run, task, tokenizer, features
        self.run_dir, self.world = run_dir, world or World()
        self.rank, self.world_size = self.world.rank, self.world.size
        self.console = console or Console(stderr=True)
        self.device = resolve_device(run.hardware, self.world.local_rank)
        self.dtype = autocast_dtype(run.hardware, self.device)
        self.model = model.to(self.device)
        self.forward_model = torch.compile(model) if run.hardware.compile else model
        # training goes through DDP (gradient all-reduce); evaluation runs the bare model on
        # every rank, so it needs no collectives and every rank reaches the same decisions
        self.train_model = self.forward_model if self.world_size == 1 else DDP(
            self.forward_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        t = run.trainer
        self.lengths = sequence_lengths(features["train"]) if t.group_by_length else None
        self.batches_per_epoch = len(epoch_batches(len(features["train"]), t.batch_size, 0, 0,
                                                   False, self.rank, self.world_size))
        self.steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / t.grad_accum))
        self.total_steps = t.max_steps if t.max_steps > 0 else t.epochs * self.steps_per_epoch
        self.eval_every = t.eval_steps or self.steps_per_epoch
        self.save_every = t.save_steps or self.eval_every
        self.optimizer = build_optimizer(self.model, run.optimizer)
        self.scheduler = build_scheduler(self.optimizer, run.scheduler, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.dtype == torch.float16)
        self.metric = t.metric or task.config.metric
        self.greater_is_better = task.config.greater_is_better
        self.step = 0
        self.best: dict[str, Any] = {"value": None, "step": None, "metrics": {}}
        self.bad_evals = 0
        self.loss_sum = 0.0  # over the whole run, for metrics.json
        self.samples = 0
        self.tokens = 0
        self.train_seconds = 0.0
        # the logging window in progress, part of a checkpoint (so a resumed run logs the same)
        self.window_loss = torch.zeros((), device=self.device)
        self.window_steps = 0
        self.window_samples = 0

    # -- data ----------------------------------------------------------------------------
    def _micro_batches(self) -> Iterator[dict[str, Any]]:
        """Endless stream of training micro-batches, starting where `self.step` left off."""
        t = self.run.trainer
        epoch, offset = divmod(self.step * t.grad_accum, self.batches_per_epoch)
        while True:
            batches = epoch_batches(len(self.features["train"]), t.batch_size, self.run.seed,
                                    epoch, True, self.rank, self.world_size,
                                    self.lengths)[offset:]
            yield from make_loader(self.task, self.features["train"], batches,
                                   pad_multiple(t.pad_to_multiple_of, self.device),
                                   self.run.data.num_workers, self.run.seed * 100_003 + epoch)
            epoch, offset = epoch + 1, 0

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        t = self.run.trainer
        stream = self._micro_batches()
        window_start = time.perf_counter()
        self.model.train()
        progress = self._progress()
        with progress, StopOnSignals() as signals:
            bar = progress.add_task("train", total=self.total_steps, completed=self.step,
                                    loss=float("nan"), lr=0.0, sps=0.0)
            while self.step < self.total_steps:
                for micro in range(t.grad_accum):
                    batch = next(stream)
                    self.window_samples += len(next(iter(batch.values()))) * self.world_size
                    if "attention_mask" in batch:
                        self.tokens += int(batch["attention_mask"].sum()) * self.world_size
                    # DDP all-reduces gradients only on the last micro-batch of a step
                    sync = micro == t.grad_accum - 1 or self.world_size == 1
                    with contextlib.nullcontext() if sync else self.train_model.no_sync():
                        with autocast(self.device, self.dtype):
                            loss = self.task.loss(self.train_model, to_device(batch, self.device))
                        self.scaler.scale(loss / t.grad_accum).backward()
                    self.window_loss += loss.detach().float() / t.grad_accum
                self._optimizer_step()
                self.window_steps += 1
                progress.update(bar, advance=1)
                if self.step % t.log_steps == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - window_start
                    mean_loss = (float(mean_across_ranks(self.window_loss, self.world))
                                 / self.window_steps)
                    check_finite(mean_loss, self.step)  # read back here anyway: no extra sync
                    sps = self.window_samples / elapsed
                    self.loss_sum += mean_loss * self.window_steps
                    self.samples += self.window_samples
                    self.train_seconds += elapsed
                    lr = self.scheduler.get_last_lr()[0]
                    self.run_dir.log({"split": "train", "step": self.step, "epoch": self._epoch(),
                                      "loss": mean_loss, "lr": lr, "samples_per_s": sps})
                    progress.update(bar, loss=mean_loss, lr=lr, sps=sps)
                    self.window_loss.zero_()
                    self.window_steps, self.window_samples = 0, 0
                    window_start = time.perf_counter()
                stop = False
                if self.step % self.eval_every == 0 or self.step == self.total_steps:
                    stop = self._evaluate_and_select()
                    window_start = time.perf_counter()  # keep eval time out of samples/s
                signum = self._stop_signal(signals)
                if (stop or signum or self.step % self.save_every == 0
                        or self.step == self.total_steps):
                    self.save_checkpoint()
                if signum:
                    raise TrainingInterrupted(signum, self.step, self.run_dir.path)
                if stop:
                    log.info("early stopping at step %d: %s did not improve for %d evaluations",
                             self.step, self.metric, self.bad_evals)
                    break
        return self._final_metrics()

    def _stop_signal(self, signals: StopOnSignals) -> int | None:
        """The signal to stop on after this step; under DDP every rank stops at the same step
        (torchrun forwards a signal to each worker, which may see it a step apart)."""
        if self.world_size == 1:
            return signals.received
        flag = torch.tensor(float(signals.received is not None), device=self.device)
        return (signals.received or signal.SIGTERM) if float(
            mean_across_ranks(flag, self.world)) > 0 else None

    def _optimizer_step(self) -> None:
        t = self.run.trainer
        if t.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def _epoch(self) -> float:
        return round(self.step * self.run.trainer.grad_accum / self.batches_per_epoch, 4)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  "
                       "{task.fields[sps]:.1f} samples/s"),
            TimeRemainingColumn(), console=self.console, transient=False,
            disable=not (self.run.trainer.progress and self.run_dir.is_main),
        )

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, split: str = "validation") -> dict[str, float]:
        return evaluate(self.task, self.forward_model, self.features[split], self.run,
                        self.dtype)

    def _evaluate_and_select(self) -> bool:
        """Evaluate on validation, update best/; True when early stopping should stop."""
        metrics = self.evaluate("validation")
        self.run_dir.log({"split": "validation", "step": self.step, "epoch": self._epoch(),
                          **metrics})
        log.info("step %d validation %s", self.step,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if self.metric not in metrics:
            from sft.errors import ConfigError

            raise ConfigError(f"trainer.metric '{self.metric}' is not computed by this task "
                              f"(available: {', '.join(metrics)})")
        value = metrics[self.metric]
        best = self.best["value"]
        improved = best is None or (value > best if self.greater_is_better else value < best)
        if improved:
            self.best = {"value": value, "step": self.step, "metrics": metrics}
            self.bad_evals = 0
            if self.run_dir.is_main:
                checkpoint.atomic_folder_write(
                    self.run_dir.best,
                    lambda tmp: checkpoint.save_pretrained(tmp, self.model, self.tokenizer))
        else:
            self.bad_evals += 1
        patience = self.run.trainer.early_stopping_patience
        return patience is not None and self.bad_evals >= patience

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        epoch, batch = divmod(self.step * self.run.trainer.grad_accum, self.batches_per_epoch)
        return {
            "step": self.step, "best": self.best, "bad_evals": self.bad_evals,
            "loss_sum": self.loss_sum, "samples": self.samples, "tokens": self.tokens,
            "train_seconds": self.train_seconds,
            "window": {"loss": float(self.window_loss), "steps": self.window_steps,
                       "samples": self.window_samples},
            # the order is recomputed from (seed, epoch); this records where it stands
            "sampler": {"seed": self.run.seed, "epoch": epoch, "batch": batch,
                        "examples": len(self.features["train"])},
            "metrics_offset": self.run_dir.metrics_size(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        examples = state["sampler"]["examples"]
        if examples != len(self.features["train"]):
            raise DataError(f"the checkpoint was trained on {examples} examples, this run has "
                            f"{len(self.features['train'])}; resume with the run's data settings")
        for key in ("step", "best", "bad_evals", "loss_sum", "samples", "tokens",
                    "train_seconds"):
            setattr(self, key, state[key])
        self.window_loss.fill_(state["window"]["loss"])
        self.window_steps = state["window"]["steps"]
        self.window_samples = state["window"]["samples"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])

    def resume_from(self, folder: Path) -> None:
        """Continue exactly where checkpoint `folder` left off: weights, state, and
        metrics.jsonl cut back to what had been logged when it was saved."""
        checkpoint.load_weights(self.model, folder)
        state = checkpoint.load_state(folder)
        self.load_state_dict(state)
        self.run_dir.truncate_metrics(state["metrics_offset"])

    def save_checkpoint(self) -> None:
        if not self.run_dir.is_main:
            return
        checkpoint.save_checkpoint(self.run_dir.checkpoints, self.step, self.model,
                                   self.tokenizer, self.state_dict())
        checkpoint.prune(self.run_dir.checkpoints, self.run.trainer.keep_last)

    # -- results -------------------------------------------------------------------------
    def _final_metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "train/loss": self.loss_sum / max(1, self.step),
            "train/steps": self.step,
            "train/samples": self.samples,
            "train/runtime_s": round(self.train_seconds, 3),
            "train/samples_per_s": self.samples / max(self.train_seconds, 1e-9),
            "train/tokens_per_s": self.tokens / max(self.train_seconds, 1e-9),
            "best/step": self.best["step"],
            "best/metric": f"validation/{self.metric}",
            "best/value": self.best["value"],
        }
        result.update({f"validation/{k}": v for k, v in self.best["metrics"].items()})
        if "test" in self.features and self.run.trainer.eval_test and self.run_dir.is_main:
            checkpoint.load_weights(self.model, self.run_dir.best)
            test = self.evaluate("test")
            self.run_dir.log({"split": "test", "step": self.best["step"], **test})
            result.update({f"test/{k}": v for k, v in test.items()})
        return result
