"""The one training loop, on plain PyTorch.

Trainer(run, task, model, tokenizer, features, out_dir, sinks).fit() trains and returns the
final metrics. Every feature is a config flag:

- length: `trainer.epochs`, or `trainer.max_steps` (>= 0 wins); one step = one optimizer update;
  max_steps=0 evaluates the model as loaded (step-0 record, best/ = that model) and stops
- `trainer.batch_size` x `trainer.grad_accum` micro-batches per step (`trainer.batching`:
  how batches are cut); `trainer.max_grad_norm`
- the loss is a per-target mean over the whole optimizer step: the task returns sums, the
  loop divides by the step's targets counted over every micro-batch and rank, so the update
  does not depend on how a step is cut into micro-batches or ranks
- LR: `optimizer` (param groups, no decay on bias/norms, `layer_decay`) and `scheduler` (warmup)
- regularizers: `optimizer.l2` / `optimizer.l1` add l2*||theta||^2 + l1*||theta||_1 to the loss
  once per step (logged as `penalty`; the logged `loss` is the data term alone);
  `task.label_smoothing`, `task.class_weights` change the training loss only (Task.train_loss)
- evaluation every `trainer.eval_steps` (default: each epoch end) and at the end, streamed
  and sharded across ranks; `trainer.metric` (direction from the task) picks best/,
  `trainer.early_stopping_patience` stops after that many evaluations without improvement
- checkpoints every `trainer.save_steps` (default: at each evaluation), `trainer.keep_last`,
  written by a background thread from a CPU copy (`trainer.async_checkpoint`);
  a checkpoint holds everything the loop depends on (weights, optimizer, scheduler, scaler,
  RNG states, step, the meter with its partial logging window, the metrics.jsonl offset), so
  `resume_from` continues bit-identically; SIGINT/SIGTERM finish the step, save and raise
  TrainingInterrupted
- `hardware.precision` autocast (bf16/fp16 with a grad scaler), `hardware.compile`
- processes: the parallel strategy (single process, DDP, FSDP2: `parallel`) wraps the model,
  suppresses gradient sync on all but the last micro-batch, and reduces counts and metrics;
  the start logs the global batch and an estimate of each rank's memory
- dynamic padding to `trainer.pad_to_multiple_of` (null: 8 on GPU, none on CPU),
  `trainer.group_by_length` (batches of similar lengths), fused AdamW (`optimizer.fused`);
  the loss is read back to the host only every `trainer.log_steps` steps
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
from datasets import DatasetDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.config.schema import RunConfig, TrainerConfig
from sft.data.collate import to_device
from sft.data.packing import check_isolation
from sft.errors import DataError, TrainingError
from sft.parallel.device import autocast, autocast_dtype, pad_multiple
from sft.parallel.memory import memory_estimate
from sft.parallel.strategies import SingleProcess
from sft.tasks.base import Task
from sft.tracking.sinks import JsonlSink, Sinks
from sft.train import checkpoint
from sft.train.evaluation import evaluate
from sft.train.interrupt import ECHO_S, StopOnSignals, TrainingInterrupted
from sft.train.meter import Meter
from sft.train.optim import Penalty, build_optimizer, build_scheduler
from sft.train.sampling import batch_plan, epoch_seed, make_loader
from sft.train.seeding import rng_state, set_rng_state

log = logging.getLogger("sft")

SAMPLES_LOG = "samples.jsonl"  # generations at each evaluation (generative tasks)
PREDICTIONS = "predictions-{split}.jsonl"  # a generative task's outputs at the last evaluation


def check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise TrainingError(f"training loss is {loss} at step {step}: the run diverged; lower "
                            "optimizer.lr or raise scheduler.warmup (with fp16: bf16 or fp32)")


def global_batch(t: TrainerConfig, world_size: int) -> str:
    """What one optimizer step trains on, across processes and accumulation."""
    unit = {"examples": f"{t.batch_size} examples",
            "tokens": f"up to {t.batch_tokens or 'batch_size x max_length'} padded tokens",
            "packed": f"{t.batch_size} packed rows"}[t.batching]
    total = (f" = {t.batch_size * world_size * t.grad_accum} "
             f"{'examples' if t.batching == 'examples' else 'rows'} per optimizer step"
             if t.batching != "tokens" else " per optimizer step")
    return (f"{unit} per device x {world_size} process{'es' if world_size > 1 else ''} x "
            f"{t.grad_accum} accumulation step{'s' if t.grad_accum > 1 else ''}{total}")


class Trainer:
    def __init__(self, run: RunConfig, task: Task, model: PreTrainedModel,
                 tokenizer: PreTrainedTokenizerBase, features: DatasetDict, out_dir: Path,
                 sinks: Sinks, strategy: SingleProcess, console: Console | None = None) -> None:
        self.run, self.task, self.tokenizer, self.features = run, task, tokenizer, features
        self.out_dir, self.sinks, self.strategy = Path(out_dir), sinks, strategy
        self.console = console or Console(stderr=True)
        self.device = strategy.device
        self.dtype = autocast_dtype(run.hardware, self.device)
        # the model the optimizer steps and best/ is saved from (FSDP2 shards it in place)
        self.model = model.to(self.device)
        # what forward/backward run through: compiled and/or wrapped by the strategy
        self.wrapped = strategy.wrap(self.model, run.hardware.compile)
        t, world = run.trainer, strategy.world
        self.batches = batch_plan(t, run.data.max_length, run.seed, features["train"],
                                  world.rank, world.size)
        if self.batches.per_epoch == 0:  # else the step stream would spin on empty epochs
            raise DataError(f"the train split ({len(features['train'])} examples) gives no "
                            f"batch of trainer.batch_size={t.batch_size} on each of "
                            f"{world.size} processes; lower trainer.batch_size or add data")
        if t.batching == "packed":  # refuse to train when packed documents would leak
            check_isolation(self.model, self.device)
        self.steps_per_epoch = max(1, math.ceil(self.batches.per_epoch / t.grad_accum))
        fixed = t.fixed_steps()
        self.total_steps = fixed if fixed is not None else t.epochs * self.steps_per_epoch
        self.eval_every = t.eval_steps or self.steps_per_epoch
        self.save_every = t.save_steps or self.eval_every
        self.optimizer = build_optimizer(self.model, run.optimizer)
        self.penalty = Penalty(self.model, run.optimizer)
        task.prepare_training(features["train"])
        self.scheduler = build_scheduler(self.optimizer, run.scheduler, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.pad = pad_multiple(t.pad_to_multiple_of, self.device)
        self.step = 0
        self.best: dict[str, Any] = {"value": None, "step": None, "metrics": {}}
        self.bad_evals = 0
        self.meter = Meter(self.device)
        self.samples = JsonlSink(self.out_dir / SAMPLES_LOG, enabled=strategy.is_main)
        self.writer = checkpoint.AsyncWriter() if t.async_checkpoint else None
        log.info("global batch: %s", global_batch(t, world.size))
        log.info("memory per rank (estimated): %s", memory_estimate(self.model, self.optimizer,
                                                                     strategy))

    # -- data ----------------------------------------------------------------------------
    def _steps(self) -> Iterator[list[dict[str, Any]]]:
        """Endless stream of optimizer steps, each a list of up to `trainer.grad_accum`
        micro-batches, starting where `self.step` left off. A step never crosses an epoch's
        end: the last step of an epoch takes what is left (as HF's Trainer does)."""
        accum = self.run.trainer.grad_accum
        epoch, step_in_epoch = divmod(self.step, self.steps_per_epoch)
        while True:
            order = self.batches.epoch(epoch)[step_in_epoch * accum:]
            loader = make_loader(self.features["train"], order, self._collate,
                                 self.run.data.num_workers, epoch_seed(self.run.seed, epoch))
            step: list[dict[str, Any]] = []
            for batch in loader:
                step.append(batch)
                if len(step) == accum:
                    yield step
                    step = []
            if step:
                yield step
            epoch, step_in_epoch = epoch + 1, 0

    def _collate(self, fetched: Any) -> dict[str, Any]:
        if self.run.trainer.batching == "packed":
            columns, row_sizes = fetched
            return self.task.collate_packed(columns, row_sizes, self.pad)
        return self.task.collate(fetched, self.pad)

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        t = self.run.trainer
        # the model as loaded: the baseline (all there is to a max_steps=0 run)
        if self.step == 0 and (self.run.eval_first or self.total_steps == 0):
            self._evaluate_and_select()
        stream = self._steps()
        window_start = time.perf_counter()
        self.model.train()
        progress = self._progress()
        echo = ECHO_S if self.strategy.world.size > 1 else 0.0
        with self._writes_finished(), progress, StopOnSignals(echo) as signals:
            bar = progress.add_task("train", total=self.total_steps, completed=self.step,
                                    loss=float("nan"), lr=0.0, sps=0.0)
            while self.step < self.total_steps:
                with self.meter.phase("data"):
                    micro_batches = next(stream)
                self._train_step(micro_batches)
                progress.update(bar, advance=1)
                if self.step % t.log_steps == 0 or self.step == self.total_steps:
                    logged = self._log_window(time.perf_counter() - window_start)
                    progress.update(bar, loss=logged["loss"], lr=logged["lr"],
                                    sps=logged["samples_per_s"])
                    window_start = time.perf_counter()
                stop = False
                if self.step % self.eval_every == 0 or self.step == self.total_steps:
                    seconds = time.perf_counter() - window_start
                    stop = self._evaluate_and_select()
                    if stop and self.meter.window.steps:  # the steps since the last log count
                        self._log_window(seconds)
                    window_start = time.perf_counter()  # keep eval time out of samples/s
                signum = self._stop_signal(signals)
                if (stop or signum or self.step % self.save_every == 0
                        or self.step == self.total_steps):
                    self.save_checkpoint()
                if signum:
                    raise TrainingInterrupted(signum, self.step, self.out_dir)
                if stop:
                    log.info("early stopping at step %d: %s did not improve for %d evaluations",
                             self.step, self.run.metric, self.bad_evals)
                    break
        return self._final_metrics()

    @contextlib.contextmanager
    def _writes_finished(self) -> Iterator[None]:
        """The loop ends with every checkpoint write complete (an interrupted run's message
        names a saved checkpoint); when it ends in an error, that error is the one raised."""
        try:
            yield
        except BaseException:
            if self.writer is not None:
                with contextlib.suppress(Exception):
                    self.writer.wait()
            raise
        if self.writer is not None:
            self.writer.wait()

    def _train_step(self, micro_batches: list[dict[str, Any]]) -> None:
        """One optimizer update over the step's micro-batches."""
        self.meter.add_step(*self.backward(micro_batches))
        self._optimizer_step()

    def backward(self, micro_batches: list[dict[str, Any]]) -> tuple[torch.Tensor, int, int,
                                                                      int, int]:
        """Gradients of one step's loss L0 + penalty: L0 the task's training loss summed over
        the micro-batches and divided by the number of targets of the whole step on every
        rank. Returns this rank's L0 sum and the step's examples, tokens, targets and
        positions over all ranks."""
        counts = [self.task.counts(batch) for batch in micro_batches]
        examples, tokens, targets, positions = self.strategy.sum_counts(
            [sum(getattr(c, key) for c in counts)
             for key in ("examples", "tokens", "targets", "positions")])
        # per-target mean over the step; DDP averages gradients over ranks, so scale by size
        per_rank_targets = max(targets, 1) / self.strategy.world.size
        step_loss = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with self.strategy.no_sync(self.wrapped, last_micro_batch=last):
                with self.meter.phase("forward"), autocast(self.device, self.dtype):
                    loss_sum = self.task.train_loss(self.wrapped, to_device(batch, self.device))
                    loss = loss_sum / per_rank_targets
                    if last and self.penalty:
                        # once per step, in the backward DDP reduces: every rank adds the same
                        # gradient and their average keeps exactly one
                        loss = loss + self.penalty()
                with self.meter.phase("backward"):
                    self.scaler.scale(loss).backward()
            step_loss += loss_sum.detach()
        return step_loss, examples, tokens, targets, positions

    def _optimizer_step(self) -> None:
        with self.meter.phase("optimizer"):
            self._update()
        self.step += 1

    def _update(self) -> None:
        t = self.run.trainer
        if t.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _log_window(self, seconds: float) -> dict[str, float]:
        """Read the window's loss back (the only host sync of the loop) and log it."""
        loss_sum = float(self.strategy.sum(self.meter.window_loss))
        window = self.meter.close_window(loss_sum, seconds)
        check_finite(window["loss"], self.step)
        record = {"split": "train", "step": self.step, "epoch": self._epoch(),
                  "lr": self.scheduler.get_last_lr()[0], **window}
        if self.penalty:  # at the window's end (the same on every rank); apart from the loss
            with torch.no_grad():
                record["penalty"] = float(self.penalty())
        self.sinks.log(record)
        return record

    def _stop_signal(self, signals: StopOnSignals) -> int | None:
        """The signal to stop on after this step; under DDP every rank stops at the same step
        (torchrun forwards a signal to each worker, which may see it a step apart)."""
        if self.strategy.world.size == 1:
            return signals.received
        flag = torch.tensor(float(signals.received is not None), device=self.device)
        return (signals.received or signal.SIGTERM) if float(self.strategy.sum(flag)) > 0 else None

    def _epoch(self) -> float:
        return round(self.step / self.steps_per_epoch, 4)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  "
                       "{task.fields[sps]:.1f} samples/s"),
            TimeRemainingColumn(), console=self.console, transient=False,
            disable=not (self.run.trainer.progress and self.strategy.is_main),
        )

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, split: str = "validation") -> dict[str, float]:
        """Metrics on `split`; generative tasks also write predictions-<split>.jsonl."""
        return evaluate(self.task, self.model, self.features[split], self.run, self.dtype,
                        self.strategy, self.out_dir / PREDICTIONS.format(split=split))

    def _evaluate_and_select(self) -> bool:
        """Evaluate on validation, update best/; True when early stopping should stop."""
        start = time.perf_counter()
        with self.meter.phase("evaluation"):
            metrics = self.evaluate("validation")
        self.sinks.log({"split": "validation", "step": self.step, "epoch": self._epoch(),
                        **metrics, "eval_s": round(time.perf_counter() - start, 3)})
        log.info("step %d validation %s", self.step,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if self.strategy.is_main or self.strategy.lockstep:  # sharded: every rank generates
            for sample in self.task.samples(self.model):
                self.samples.log({"step": self.step, **sample})
        value, best = metrics[self.run.metric], self.best["value"]
        improved = best is None or (value > best if self.run.greater_is_better else value < best)
        if improved:
            self.best = {"value": value, "step": self.step, "metrics": metrics}
            self.bad_evals = 0
            checkpoint.save_model(self.out_dir / checkpoint.BEST, self.strategy, self.model,
                                  self.tokenizer)
        else:
            self.bad_evals += 1
        patience = self.run.trainer.early_stopping_patience
        return patience is not None and self.bad_evals >= patience

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        epoch, step_in_epoch = divmod(self.step, self.steps_per_epoch)
        return {
            "step": self.step, "best": self.best, "bad_evals": self.bad_evals,
            "meter": self.meter.state_dict(),
            # the order is recomputed from (seed, epoch); this records where it stands
            "sampler": {"seed": self.run.seed, "epoch": epoch,
                        "batch": step_in_epoch * self.run.trainer.grad_accum,
                        "examples": len(self.features["train"])},
            "metrics_offset": self.sinks.jsonl.size(), "samples_offset": self.samples.size(),
            # a sharded strategy saves the optimizer with the weights (sharded files)
            **({} if self.strategy.shards_state else {"optimizer": self.optimizer.state_dict()}),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": rng_state(), "rng_ranks": self.strategy.gather(rng_state()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        examples = state["sampler"]["examples"]
        if examples != len(self.features["train"]):
            raise DataError(f"the checkpoint was trained on {examples} examples, this run has "
                            f"{len(self.features['train'])}; resume with the run's data settings")
        self.step, self.best, self.bad_evals = state["step"], state["best"], state["bad_evals"]
        self.meter.load_state_dict(state["meter"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        # each rank's own stream; on another number of ranks, rank 0's
        ranks = state.get("rng_ranks") or [state["rng"]]
        set_rng_state(ranks[self.strategy.world.rank] if len(ranks) == self.strategy.world.size
                      else ranks[0])

    def resume_from(self, folder: Path) -> None:
        """Continue exactly where checkpoint `folder` left off: weights, state, and
        metrics.jsonl cut back to what had been logged when it was saved."""
        state = checkpoint.restore(folder, self.strategy, self.model, self.optimizer)
        self.load_state_dict(state)
        self.sinks.jsonl.truncate(state["metrics_offset"])
        self.samples.truncate(state.get("samples_offset", 0))

    def save_checkpoint(self) -> None:
        with self.meter.phase("checkpoint"):
            self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        folder = self.out_dir / checkpoint.CHECKPOINTS
        keep = self.run.trainer.keep_last
        checkpoint.save_model(folder / f"step-{self.step}", self.strategy, self.model,
                              self.tokenizer, self.state_dict(), self.optimizer, self.writer,
                              after=(lambda: checkpoint.prune(folder, keep))
                              if self.strategy.is_main else None)

    # -- results -------------------------------------------------------------------------
    def _final_metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            **(self.meter.summary() if self.step else {}), **self.meter.breakdown(),
            "train/steps": self.step,
            "best/step": self.best["step"], "best/metric": f"validation/{self.run.metric}",
            "best/value": self.best["value"], "best/greater_is_better": self.run.greater_is_better,
        }
        result.update({f"validation/{k}": v for k, v in self.best["metrics"].items()})
        result.update({f"signature/{k}": v for k, v in self.task.signatures().items()})
        if "test" in self.features and self.run.trainer.eval_test:
            checkpoint.load_weights(self.model, self.out_dir / checkpoint.BEST, self.strategy)
            test = self.evaluate("test")
            self.sinks.log({"split": "test", "step": self.best["step"], **test})
            result.update({f"test/{k}": v for k, v in test.items()})
        return result
