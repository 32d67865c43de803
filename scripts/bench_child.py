"""One benchmark measurement in a fresh process (run by scripts/bench.py, never imported).

    python scripts/bench_child.py '{"kind": "sft", ...}'

Kinds: `sft` (the real `sft train` CLI in this process), `hf` (transformers.Trainer on the
very same tokenized features), `matmul` (peak GFLOP/s), `evalmem` (memory of one streamed
evaluation), `startup` (data + trainer set-up time after model load). The last stdout line
is `BENCH {json}` with the numbers and the process's peak memory.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sft_overrides(spec: dict[str, Any]) -> list[str]:
    """The one set of hyperparameters every case shares, as `sft train` overrides."""
    return [
        "task=sentiment", "model=minilm", f"data.dir={spec['data_dir']}",
        f"data.max_length={spec['max_length']}", f"trainer.batch_size={spec['batch_size']}",
        f"optimizer.lr={spec['lr']}", f"scheduler.warmup={spec['warmup']}",
        # --full: whole epochs, evaluated (and checkpointed) once at the end
        *([f"trainer.epochs={spec['epochs']}", "trainer.max_steps=-1"] if spec.get("epochs")
          else [f"trainer.max_steps={spec['steps']}", f"trainer.eval_steps={spec['steps']}"]),
        f"seed={spec['seed']}", f"hardware.device={spec['device']}",
        f"hardware.precision={spec['precision']}", f"hardware.num_threads={spec['threads']}",
        f"data.cache_dir={spec['cache_dir']}", "trainer.progress=false",
        *([f"data.max_train_samples={spec['train_samples']}"] if spec.get("train_samples") else []),
        *([f"data.max_eval_samples={spec['eval_samples']}"] if spec.get("eval_samples") else []),
        *spec.get("extra", []),
    ]


def compose_run(spec: dict[str, Any]) -> Any:
    from sft.config.compose import compose_run as compose

    return compose([*sft_overrides(spec), "run_dir=unused"])


def non_embedding_params(model: Any) -> int:
    """Parameters that do matmul work per token (embedding lookups do not)."""
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def run_sft(spec: dict[str, Any]) -> dict[str, Any]:
    """The real CLI, as a user runs it; numbers from the run's metrics.json."""
    from sft import cli

    with tempfile.TemporaryDirectory() as tmp:
        code = cli.main(["train", *sft_overrides(spec), f"run_dir={tmp}/run"])
        if code != 0:
            raise SystemExit(f"sft train failed with status {code}")
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    return {
        "samples_per_s": metrics["train/samples_per_s"],
        "tokens_per_s": metrics["train/tokens_per_s"],
        "train_s": metrics["train/runtime_s"],
        "accuracy": metrics["validation/accuracy"],
        "steps": metrics["train/steps"],
        "padding_fraction": metrics["train/padding_fraction"],
        # where the run's wall time went (the loop's meter): time/data_s -> phase/data_s
        **{k.replace("time/", "phase/"): v for k, v in metrics.items() if k.startswith("time/")},
    }


def step_clock() -> tuple[Any, dict[str, float]]:
    """An HF Trainer callback that times training from its start to the last step's end
    (evaluation and saving after it excluded), and the dict it writes "start"/"end" into."""
    from transformers import TrainerCallback

    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            clock["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            clock["end"] = time.perf_counter()

    return Clock(), clock


def run_hf(spec: dict[str, Any]) -> dict[str, Any]:
    """transformers.Trainer on the same features, model init, schedule and optimizer."""
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from sft.data.features import sequence_lengths
    from sft.parallel.device import keep_freed_memory
    from sft.run.runner import prepare
    from sft.train.seeding import seed_everything

    torch.set_num_threads(spec["threads"])
    if spec.get("keep_freed_memory"):  # sft's CPU allocator setting, for a like-with-like row
        keep_freed_memory()
    run = compose_run(spec)
    seed_everything(run.seed)  # the same classifier-head init as sft's run
    prepared = prepare(run)
    model = prepared.task.build_model(run.model)
    columns = ["input_ids", "attention_mask", "token_type_ids", "labels"]
    train = prepared.features["train"].select_columns(columns)
    train = train.add_column("length", sequence_lengths(train))
    valid = prepared.features["validation"].select_columns(columns)
    pad_max = spec.get("padding") == "max_length"
    pad = (DataCollatorWithPadding(prepared.tokenizer, padding="max_length",
                                   max_length=spec["max_length"]) if pad_max
           else DataCollatorWithPadding(prepared.tokenizer))
    counted = {"samples": 0, "tokens": 0, "positions": 0}

    def collate(features: list[dict]) -> dict:
        return pad([{k: v for k, v in f.items() if k != "length"} for f in features])

    class CountingTrainer(Trainer):
        """Counts what the optimizer steps consume (the loader prefetches one batch more)."""

        def training_step(self, model, inputs, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            counted["samples"] += len(inputs["input_ids"])
            counted["tokens"] += int(inputs["attention_mask"].sum())
            counted["positions"] += inputs["attention_mask"].numel()
            return super().training_step(model, inputs, *args, **kwargs)

    timer, clock = step_clock()

    def accuracy(pred: Any) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=spec["batch_size"],
            per_device_eval_batch_size=run.trainer.eval_batch_size, learning_rate=spec["lr"],
            weight_decay=0.01, warmup_steps=spec["warmup"], lr_scheduler_type="linear",
            max_steps=-1 if spec.get("epochs") else spec["steps"],
            num_train_epochs=spec.get("epochs") or 1, max_grad_norm=1.0, seed=spec["seed"],
            bf16=spec["precision"] == "bf16", use_cpu=spec["device"] == "cpu",
            train_sampling_strategy="random" if pad_max else "group_by_length",
            length_column_name="length", eval_strategy="no", save_strategy="no",
            logging_steps=run.trainer.log_steps, report_to="none", disable_tqdm=True,
        )
        trainer = CountingTrainer(model=model, args=args, train_dataset=train, eval_dataset=valid,
                          data_collator=collate, compute_metrics=accuracy, callbacks=[timer])
        trainer.train()
        seconds = clock["end"] - clock["start"]
        samples, tokens = counted["samples"], counted["tokens"]
        result = trainer.evaluate()
    return {
        "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds, "train_s": seconds,
        "accuracy": result["eval_accuracy"], "steps": trainer.state.global_step,
        "padding_fraction": 1 - tokens / max(counted["positions"], 1),
    }


def run_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    """Best GFLOP/s of a square matmul per dtype (best of 6 timings of ~0.2 s)."""
    import torch

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    n = 4096 if device.type == "cuda" else 1024
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        best = 0.0
        for attempt in range(6):  # torch.mm and F.linear (the models' path) can differ
            op = torch.mm if attempt % 2 else torch.nn.functional.linear
            reps, start = 0, time.perf_counter()
            while True:
                op(a, b)
                reps += 1
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                if elapsed > 0.2:
                    break
            best = max(best, 2 * n**3 * reps / elapsed / 1e9)
        out[f"{name}_gflops"] = best
    return out


class RssSampler(threading.Thread):
    """Peak resident memory of this process while a block runs (sampled every 5 ms)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = self.now()
        self.done = threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.now())


def run_evalmem(spec: dict[str, Any]) -> dict[str, Any]:
    """Evaluate on the validation set repeated `spec['eval_repeat']` times; report how much
    memory the evaluation itself adds over what the process held before it."""
    import gc

    import torch
    from datasets import concatenate_datasets

    from sft.parallel.device import apply_threads, autocast_dtype, resolve_device
    from sft.run.runner import prepare
    from sft.train.evaluation import evaluate

    run = compose_run(spec)
    apply_threads(run.hardware)
    prepared = prepare(run, ("validation",))
    device = resolve_device(run.hardware)
    model = prepared.task.build_model(run.model).to(device)
    valid = prepared.features["validation"]
    big = concatenate_datasets([valid] * spec["eval_repeat"])
    warm = valid.select(range(min(len(valid), run.trainer.eval_batch_size)))
    evaluate(prepared.task, model, warm, run, autocast_dtype(run.hardware, device))  # warm-up
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    sampler = RssSampler()
    base = sampler.peak
    sampler.start()
    start = time.perf_counter()
    metrics = evaluate(prepared.task, model, big, run, autocast_dtype(run.hardware, device))
    seconds = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    grown = (torch.cuda.max_memory_allocated() - before if device.type == "cuda"
             else sampler.peak - base)
    return {"eval_rows": len(big), "eval_s": seconds, "eval_growth_mb": grown / 2**20,
            "accuracy": metrics["accuracy"]}


def run_startup(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds from 'model loaded' to the first training batch: tokenizer, data (cached
    features on a second launch), lengths, optimizer, first batch."""
    from sft.parallel.device import apply_host, resolve_device
    from sft.parallel.strategies import make_strategy
    from sft.parallel.world import World
    from sft.run.rundir import RunDir
    from sft.run.runner import prepare
    from sft.tracking.sinks import Sinks
    from sft.train.trainer import Trainer

    run = compose_run(spec)
    device = resolve_device(run.hardware)
    apply_host(run.hardware, device)
    start = time.perf_counter()
    prepared = prepare(run)
    data_s = time.perf_counter() - start
    model = prepared.task.build_model(run.model)
    resumed = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        strategy = make_strategy(World(), device)
        trainer = Trainer(run, prepared.task, model, prepared.tokenizer, prepared.features,
                          Path(tmp), Sinks(RunDir(tmp).metrics_log()), strategy)
        next(trainer._steps())
    return {"startup_s": data_s + time.perf_counter() - resumed, "data_s": data_s,
            "non_embedding_params": non_embedding_params(model)}


KINDS = {"sft": run_sft, "hf": run_hf, "matmul": run_matmul, "evalmem": run_evalmem,
         "startup": run_startup}


def main() -> None:
    spec = json.loads(sys.argv[1])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = KINDS[spec["kind"]](spec)
    result["peak_mb"] = peak_memory_mb(spec.get("device", "cpu"))
    print("BENCH " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
