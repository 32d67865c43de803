"""Schedules follow their formulas; weight decay skips biases and norms; freezing holds."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from sft.config.schema import ModelConfig
from sft.models.freezing import freeze
from sft.train.optim import build_optimizer, build_scheduler, param_groups

LR, TOTAL = 1e-3, 100


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return BertForSequenceClassification(config)


def lrs(node: dict, total: int = TOTAL) -> list[float]:
    model = tiny_bert()
    opt = build_optimizer(model, {"_target_": "torch.optim.SGD", "_partial_": True, "lr": LR})
    sched = build_scheduler(opt, {"_partial_": True, **node}, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_linear_warmup_then_linear_decay() -> None:
    got = lrs({"_target_": "sft.train.optim.linear_schedule", "warmup": 0.1})
    want = [LR * (t / 10 if t < 10 else (TOTAL - t) / (TOTAL - 10)) for t in range(TOTAL)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert max(got) == pytest.approx(LR) and got.index(max(got)) == 10


def test_warmup_as_steps_equals_warmup_as_ratio() -> None:
    steps = lrs({"_target_": "sft.train.optim.linear_schedule", "warmup": 10})
    ratio = lrs({"_target_": "sft.train.optim.linear_schedule", "warmup": 0.1})
    assert steps == ratio


def test_cosine_schedule() -> None:
    got = lrs({"_target_": "sft.train.optim.cosine_schedule", "warmup": 5})
    want = [LR * (t / 5 if t < 5 else 0.5 * (1 + math.cos(math.pi * (t - 5) / (TOTAL - 5))))
            for t in range(TOTAL)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_exponential_schedule_matches_formula() -> None:
    got = lrs({"_target_": "sft.train.optim.exponential_schedule", "decay_rate": 0.5, "decay_steps": 20})
    assert got == pytest.approx([LR * 0.5 ** (t / 20) for t in range(TOTAL)], rel=1e-9)


def test_constant_schedule() -> None:
    assert set(lrs({"_target_": "sft.train.optim.constant_schedule"})) == {LR}


def test_no_weight_decay_on_bias_and_layernorm() -> None:
    groups = param_groups(tiny_bert(), LR, 0.01, None)
    for group in groups:
        for name in group["names"]:
            no_decay = name.endswith(".bias") or "LayerNorm" in name
            assert group["weight_decay"] == (0.0 if no_decay else 0.01), name
    assert any(g["weight_decay"] == 0.01 for g in groups)


def test_layer_decay_scales_lr_by_depth() -> None:
    groups = param_groups(tiny_bert(), LR, 0.0, 0.5)
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    assert lr_of["classifier.weight"] == pytest.approx(LR)
    assert lr_of["bert.encoder.layer.2.output.dense.weight"] == pytest.approx(LR * 0.5)
    assert lr_of["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(LR * 0.5 ** 3)
    assert lr_of["bert.embeddings.word_embeddings.weight"] == pytest.approx(LR * 0.5 ** 4)


def test_frozen_layers_do_not_change() -> None:
    model = tiny_bert()
    freeze(model, ModelConfig(freeze_embeddings=True, freeze_layers=2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2})
    inputs = torch.randint(0, 50, (4, 8))
    for _ in range(3):
        model(input_ids=inputs, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    after = dict(model.named_parameters())
    frozen = [n for n in before if "embeddings" in n or ".layer.0." in n or ".layer.1." in n]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert not torch.equal(before["bert.encoder.layer.2.output.dense.weight"],
                           after["bert.encoder.layer.2.output.dense.weight"])
