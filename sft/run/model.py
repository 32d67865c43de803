"""A run's model: built for training (seeded, adapter attached), or read back from a run
dir's best/ (a full model, or an adapter applied to the base it was trained on)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from sft.config.schema import AdapterConfig, ModelConfig, RunConfig
from sft.errors import ModelError
from sft.files import sha256_file
from sft.models.adapters import attach
from sft.models.loading import enable_gradient_checkpointing, weight_files
from sft.tasks.base import Task

log = logging.getLogger("sft")


def build_model(run: RunConfig, task: Task) -> PreTrainedModel:
    """The model to train. Random weights (a random base, a new head, LoRA's A matrices) are a
    function of run.seed alone, so a resumed run or an export rebuilds the same frozen base."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        model = task.build_model(run.model)
        if run.model.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if run.adapter.type != "none":
            model = attach(model, run.adapter, run.model.freeze_layers)
    return model


def saved_model(model: ModelConfig, folder: Path) -> ModelConfig:
    """`model` pointed at a full model saved in `folder` (best/, an export): its weights,
    tokenizer and config, nothing rebuilt or frozen."""
    return replace(model, name_or_path=str(folder), init="pretrained", config_overrides={},
                   architecture=None, encoder_decoder=False, freeze_layers=0,
                   freeze_embeddings=False, gguf_file=None, quantization=None)


def base_config(run: RunConfig) -> RunConfig:
    """The run as its adapter's base is built for merging: full precision, no adapter."""
    return replace(run, model=replace(run.model, quantization=None), adapter=AdapterConfig())


def check_base(run_dir: Path, model: ModelConfig) -> None:
    """Refuse to apply a run's adapter to a base other than the one it was trained on (the
    weight hashes env.json recorded)."""
    try:
        recorded = json.loads((run_dir / "env.json").read_text()).get("model_files") or {}
    except (OSError, ValueError):
        recorded = {}
    current = {p.name: sha256_file(p) for p in weight_files(model)}
    if not recorded or not current or recorded == current:
        if not recorded:
            log.warning("%s/env.json records no base model hashes: the base is not checked",
                        run_dir)
        return
    differing = sorted(set(recorded) ^ set(current)) or sorted(
        n for n in recorded if recorded[n] != current[n])
    raise ModelError(f"the adapter in {run_dir} was trained on another base than "
                     f"{model.name_or_path} ({differing[0]} differs from the hash in env.json); "
                     "use the run's own base model (model.name_or_path in its config.yaml)")


def adapted_model(run: RunConfig, run_dir: Path, task: Task, folder: Path) -> PeftModel:
    """The base the run trained on (checked, rebuilt as for training) with the adapter saved
    in `folder`."""
    check_base(run_dir, run.model)
    base = build_model(base_config(run), task)
    return PeftModel.from_pretrained(base, folder)
