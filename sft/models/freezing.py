"""Which parameters train: frozen embeddings and bottom layers, and the layer index of a
parameter (also used for layer-wise learning-rate decay)."""

from __future__ import annotations

import re

from torch import nn
from transformers import PreTrainedModel

from sft.config.schema import ModelConfig
from sft.errors import ModelError

_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block)\.(\d+)\.")


def layer_index(param_name: str) -> int | None:
    """Index of the transformer layer a parameter belongs to, or None outside the layers."""
    match = _LAYER_INDEX.search(param_name)
    return int(match.group(1)) if match else None


def is_embedding(param_name: str) -> bool:
    return "embed" in param_name or ".wte." in param_name or ".wpe." in param_name


def num_layers(model: PreTrainedModel) -> int:
    indices = {layer_index(n) for n, _ in model.named_parameters()} - {None}
    return max(indices) + 1 if indices else 0  # type: ignore[type-var]


def freeze(model: nn.Module, cfg: ModelConfig) -> None:
    """Freeze the embeddings and/or the bottom `freeze_layers` transformer layers."""
    if cfg.freeze_layers and cfg.freeze_layers > num_layers(model):  # type: ignore[arg-type]
        raise ModelError(f"model.freeze_layers={cfg.freeze_layers} but the model has only "
                         f"{num_layers(model)} layers")  # type: ignore[arg-type]
    for name, param in model.named_parameters():
        index = layer_index(name)
        if (cfg.freeze_embeddings and index is None and is_embedding(name)) or (
            index is not None and index < cfg.freeze_layers
        ):
            param.requires_grad_(False)
