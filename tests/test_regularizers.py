"""Regularizers: optimizer.l2 / optimizer.l1 penalties, task.label_smoothing, task.class_weights.

Each gradient the trainer's own backward (Trainer.backward, what the loop calls) leaves on the
tiny model equals an independent autograd computation of the formula: the per-target mean of
torch's cross_entropy (with its label_smoothing and weight) over the whole step, plus
l2 * ||theta||^2 + l1 * ||theta||_1 over the trainable parameters, once per step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from sklearn.utils.class_weight import compute_class_weight

from sft.cli import main
from sft.config.compose import compose_run
from sft.data.collate import to_device
from sft.parallel.strategies import make_strategy
from sft.parallel.world import World
from sft.run.model import build_model
from sft.run.runner import prepare
from sft.tasks.base import IGNORE_INDEX
from sft.tracking.sinks import JsonlSink, Sinks
from sft.train.trainer import Trainer
from tests.conftest import TINY, read_jsonl, train_tiny
from tests.test_errors import assert_one_line, in_process  # noqa: F401  (a fixture)

ATOL = 1e-6
# 3 micro-batches a step: the penalty must be added once per step, not per micro-batch
STEP = ["data.max_train_samples=24", "trainer.batch_size=4", "trainer.grad_accum=3",
        "+model.config_overrides.hidden_dropout_prob=0",
        "+model.config_overrides.attention_probs_dropout_prob=0"]


def build_trainer(tmp_path: Path, data_dir: Path, cache_dir: Path, *overrides: str) -> Trainer:
    run = compose_run([*TINY, f"data.dir={data_dir}", f"data.cache_dir={cache_dir}",
                       f"run_dir={tmp_path / 'run'}", *overrides])
    prepared = prepare(run, ("train",))
    model = build_model(run, prepared.task)
    return Trainer(run, prepared.task, model, prepared.tokenizer, prepared.features, tmp_path,
                   Sinks(JsonlSink(tmp_path / "metrics.jsonl")),
                   make_strategy(World(), torch.device("cpu")))


def trainer_gradients(trainer: Trainer) -> tuple[list[dict[str, Any]], int, dict[str, torch.Tensor]]:
    """The first step's micro-batches, its targets, and the gradients Trainer.backward leaves."""
    trainer.model.eval()  # no dropout anywhere: both computations see the same forward
    step = next(trainer._steps())
    assert len(step) == trainer.run.trainer.grad_accum
    targets = trainer.backward(step)[3]
    return step, targets, grads(trainer.model)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    found = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return found


def autograd_gradients(model: torch.nn.Module, step: list[dict[str, Any]], targets: int,
                       l2: float = 0.0, l1: float = 0.0, **ce: Any) -> dict[str, torch.Tensor]:
    """Gradients of sum(cross_entropy) / targets + l2 ||theta||^2 + l1 ||theta||_1, written
    out independently of sft's loss code."""
    data = sum(F.cross_entropy(logits(model, batch).flatten(0, -2), batch["labels"].flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum", **ce) for batch in step)
    theta = [p for p in model.parameters() if p.requires_grad]
    loss = data / targets + l2 * sum((p ** 2).sum() for p in theta) + l1 * sum(p.abs().sum()
                                                                               for p in theta)
    loss.backward()
    return grads(model)


def logits(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    names = ("input_ids", "attention_mask", "token_type_ids")
    return model(**{k: v for k, v in to_device(batch, torch.device("cpu")).items()
                    if k in names}).logits.float()


def gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("terms", [{"l2": 0.01}, {"l1": 0.001}, {"l2": 0.01, "l1": 0.001}])
def test_penalty_gradient_is_added_once_per_step(terms: dict[str, float], tmp_path: Path,
                                                 data_dir: Path, cache_dir: Path) -> None:
    trainer = build_trainer(tmp_path, data_dir, cache_dir, "task=sentiment", *STEP,
                            *(f"optimizer.{k}={v}" for k, v in terms.items()))
    step, targets, got = trainer_gradients(trainer)
    want = autograd_gradients(trainer.model, step, targets, **terms)
    assert gap(got, want) <= ATOL
    plain = autograd_gradients(trainer.model, step, targets)
    assert gap(got, plain) > 100 * ATOL  # the penalty is there, far above the tolerance
    # per micro-batch instead of per step would add it grad_accum times
    thrice = autograd_gradients(trainer.model, step, targets, **{k: 3 * v for k, v in terms.items()})
    assert gap(got, thrice) > 100 * ATOL


def test_smoothed_weighted_cross_entropy_gradient(tmp_path: Path, data_dir: Path,
                                                  cache_dir: Path) -> None:
    trainer = build_trainer(tmp_path, data_dir, cache_dir, "task=sentiment", *STEP,
                            "task.label_smoothing=0.1", "task.class_weights=balanced")
    labels = trainer.features["train"]["labels"]
    sklearn = compute_class_weight("balanced", classes=np.arange(2), y=np.array(labels))
    weights = trainer.task.class_weights
    assert weights is not None and weights.tolist() == pytest.approx(sklearn.tolist(), rel=1e-6)
    assert not trainer.penalty  # optimizer.l2 / l1 default to 0: no extra work
    step, targets, got = trainer_gradients(trainer)
    want = autograd_gradients(trainer.model, step, targets, label_smoothing=0.1,
                              weight=torch.tensor(sklearn, dtype=torch.float))
    assert gap(got, want) <= ATOL
    assert gap(got, autograd_gradients(trainer.model, step, targets)) > 100 * ATOL
    # evaluation's loss stays the plain cross-entropy, so runs compare
    evaluator = trainer.task.evaluator()
    with torch.no_grad():
        for batch in step:
            evaluator.update(trainer.model, batch)
        plain = sum(F.cross_entropy(logits(trainer.model, b), b["labels"], reduction="sum")
                    for b in step)
    assert evaluator.compute()["loss"] == pytest.approx(float(plain) / targets, rel=1e-6)


def test_token_classification_label_smoothing_gradient(tmp_path: Path, data_dir: Path,
                                                       cache_dir: Path) -> None:
    trainer = build_trainer(tmp_path, data_dir, cache_dir, "task=ner", *STEP,
                            "task.label_smoothing=0.2")
    step, targets, got = trainer_gradients(trainer)
    assert targets < sum(int(b["attention_mask"].sum()) for b in step)  # sub-tokens ignored
    want = autograd_gradients(trainer.model, step, targets, label_smoothing=0.2)
    assert gap(got, want) <= ATOL
    assert gap(got, autograd_gradients(trainer.model, step, targets)) > 100 * ATOL


def test_causal_lm_label_smoothing_gradient(tmp_path: Path, data_dir: Path,
                                            cache_dir: Path) -> None:
    """The LM head runs on the target positions only (sft.tasks.lm); smoothing there equals
    smoothing over the full logits with prompts ignored."""
    trainer = build_trainer(tmp_path, data_dir, cache_dir, "task=instruction", "model=tiny-llama",
                            "data.max_train_samples=8", "data.max_length=128",
                            "trainer.batch_size=2", "trainer.grad_accum=2",
                            "task.label_smoothing=0.1")
    step, targets, got = trainer_gradients(trainer)
    assert trainer.task.lm.head_on_targets  # the path under test
    want = autograd_gradients(trainer.model, step, targets, label_smoothing=0.1)
    assert gap(got, want) <= ATOL
    assert gap(got, autograd_gradients(trainer.model, step, targets)) > 100 * ATOL


@pytest.mark.usefixtures("in_process")
def test_train_with_regularizers_records_them(tmp_path: Path, data_dir: Path,
                                              cache_dir: Path) -> None:
    run_dir = train_tiny(tmp_path / "run", data_dir, cache_dir, "task=sentiment",
                         "data.max_train_samples=32", "data.max_eval_samples=16",
                         "trainer.batch_size=8", "trainer.max_steps=4", "trainer.log_steps=2",
                         "optimizer.l2=0.01", "task.label_smoothing=0.1",
                         "task.class_weights=balanced")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["optimizer"]["l2"] == 0.01 and config["optimizer"]["l1"] == 0.0
    assert config["task"]["label_smoothing"] == 0.1
    assert config["task"]["class_weights"] == "balanced"
    assert "task.class_weights=balanced: negative " in (run_dir / "train.log").read_text()
    train = [e for e in read_jsonl(run_dir / "metrics.jsonl") if e["split"] == "train"]
    assert [e["step"] for e in train] == [2, 4]
    # the penalty is logged apart from the loss: l2 * ||theta||^2 of the weights at that step
    weights = load_file(run_dir / "checkpoints" / "step-4" / "model.safetensors")
    norm = sum(float((w.double() ** 2).sum()) for w in weights.values() if w.is_floating_point())
    assert train[-1]["penalty"] == pytest.approx(0.01 * norm, rel=1e-5)
    assert 0 < train[-1]["loss"] < 2 * train[-1]["penalty"] + 10  # a data loss, finite
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 4


@pytest.mark.usefixtures("in_process")
def test_class_weights_of_the_wrong_length_is_one_line_error(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = main(["train", *TINY, "task=sentiment", "task.class_weights=[1.0,2.0,3.0]",
                 f"run_dir={tmp_path / 'run'}"])
    out, err = capfd.readouterr()
    assert_one_line(code, out, err, "task.class_weights must be balanced, null, or 2 weights",
                    tmp_path / "run")
