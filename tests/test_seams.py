"""The trainer's seams: a per-target loss that does not depend on how a step is cut, the
metric's direction, evaluation sharded across ranks, and feature caches that cannot go stale."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from sft.cli import main
from sft.config.compose import compose_run
from sft.data.features import cache_key, tokenizer_fingerprint
from sft.run.runner import prepare
from sft.train.evaluation import evaluate
from tests.conftest import TINY, read_jsonl

NO_DROPOUT = ["+model.config_overrides.hidden_dropout_prob=0",
              "+model.config_overrides.attention_probs_dropout_prob=0"]


def one_step(run_dir: Path, data_dir: Path, cache_dir: Path, batch: int, accum: int) -> Path:
    """One optimizer step of NER on the same 32 sentences, cut into `accum` micro-batches."""
    code = main(["train", "task=ner", *TINY, *NO_DROPOUT, f"data.dir={data_dir}",
                 f"data.cache_dir={cache_dir}", f"run_dir={run_dir}", "data.max_train_samples=32",
                 "data.max_eval_samples=8", f"trainer.batch_size={batch}",
                 f"trainer.grad_accum={accum}", "trainer.max_steps=1", "trainer.log_steps=1",
                 "trainer.group_by_length=false", "trainer.eval_test=false",
                 # SGD: the update is the gradient itself (Adam's g/|g| would hide a bad scale)
                 "optimizer=sgd", "optimizer.lr=0.5"])
    assert code == 0
    return run_dir


def test_grad_accum_equals_one_big_batch_for_uneven_token_counts(tmp_path: Path, data_dir: Path,
                                                                 cache_dir: Path) -> None:
    big = one_step(tmp_path / "big", data_dir, cache_dir, batch=32, accum=1)
    cut = one_step(tmp_path / "cut", data_dir, cache_dir, batch=8, accum=4)
    losses = [[r["loss"] for r in read_jsonl(d / "metrics.jsonl") if r["split"] == "train"]
              for d in (big, cut)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    weights = [load_file(d / "checkpoints" / "step-1" / "model.safetensors") for d in (big, cut)]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=1e-6)


def test_metric_loss_keeps_the_lowest_loss_checkpoint(tmp_path: Path, data_dir: Path,
                                                      cache_dir: Path) -> None:
    run_dir = tmp_path / "run"
    code = main(["train", *TINY, f"data.dir={data_dir}", f"data.cache_dir={cache_dir}",
                 f"run_dir={run_dir}", "data.max_train_samples=64", "data.max_eval_samples=64",
                 "trainer.batch_size=8", "trainer.max_steps=16", "trainer.eval_steps=2",
                 "trainer.metric=loss", "optimizer.lr=3e-3", "scheduler=constant",
                 "trainer.eval_test=false"])
    assert code == 0
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "validation"]
    lowest = min(evals, key=lambda r: r["loss"])
    highest = max(evals, key=lambda r: r["loss"])
    assert lowest["step"] != highest["step"]  # the direction matters in this run
    final = json.loads((run_dir / "metrics.json").read_text())
    assert (final["best/step"], final["best/value"]) == (lowest["step"], lowest["loss"])
    assert final["best/greater_is_better"] is False


def test_unknown_trainer_metric_exits_2_before_training(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    code = main(["train", *TINY, "data.dir=/nonexistent", f"run_dir={run_dir}",
                 "trainer.metric=acuracy"])
    err = capsys.readouterr().err
    assert code == 2 and "trainer.metric 'acuracy' is not computed" in err and "accuracy" in err
    assert not run_dir.exists()  # validated with the config: before any data or model


# -- evaluation sharded across 2 gloo ranks ---------------------------------------------
def _evaluate_on_rank(rank: int, overrides: list[str], port: int, out: str) -> None:
    from sft.parallel.strategies import make_strategy
    from sft.parallel.world import World

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        run = compose_run(overrides)
        prepared = prepare(run, ("validation",))
        torch.manual_seed(0)
        model = prepared.task.build_model(run.model).eval()
        strategy = make_strategy(World(rank, rank, 2), torch.device("cpu"))
        metrics = evaluate(prepared.task, model, prepared.features["validation"], run, None,
                           strategy)
        Path(f"{out}.{rank}").write_text(json.dumps(metrics))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("task", ["sentiment", "qa"])
def test_two_ranks_evaluate_with_the_metrics_of_one_process(task: str, tmp_path: Path,
                                                            data_dir: Path, cache_dir: Path) -> None:
    overrides = [f"task={task}", *TINY, f"data.dir={data_dir}", f"data.cache_dir={cache_dir}",
                 "data.max_train_samples=8", "data.max_eval_samples=37", "trainer.eval_batch_size=5"]
    run = compose_run(overrides)
    prepared = prepare(run, ("validation",))
    torch.manual_seed(0)
    model = prepared.task.build_model(run.model).eval()
    alone = evaluate(prepared.task, model, prepared.features["validation"], run, None)
    out = str(tmp_path / "metrics")
    port = 29_500 + os.getpid() % 1000
    torch.multiprocessing.start_processes(_evaluate_on_rank, args=(overrides, port, out),
                                          nprocs=2, start_method="spawn")
    for rank in (0, 1):
        assert json.loads(Path(f"{out}.{rank}").read_text()) == pytest.approx(alone, rel=1e-6)


# -- caches ---------------------------------------------------------------------------------
def test_cache_key_changes_with_the_features_version_and_the_chat_template(data_dir: Path) -> None:
    run = compose_run(["task=sentiment", "model=tiny-bert", f"data.dir={data_dir}"])
    task = prepare(run, ()).task
    rows = Dataset.from_dict({"sentence": ["a film"], "labels": [1]})
    tokenizer_id = tokenizer_fingerprint(task.tokenizer)
    before = cache_key(task, tokenizer_id, rows, "train", run.data)
    assert cache_key(task, tokenizer_id, rows, "train", run.data) == before
    task.features_version = 2  # type: ignore[misc]  # as a changed featurize() would declare
    assert cache_key(task, tokenizer_id, rows, "train", run.data) != before
    task.features_version = 1  # type: ignore[misc]
    task.tokenizer.chat_template = "{{ messages }}"
    assert cache_key(task, tokenizer_id, rows, "train", run.data) != before
