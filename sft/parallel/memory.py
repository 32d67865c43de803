"""The memory line a run starts with: what weights, gradients and optimizer state take on
each rank, estimated from the parameters (activations come on top and depend on the batch)."""

from __future__ import annotations

import torch
from torch import nn

from sft.parallel.strategies import SingleProcess


def optimizer_values(optimizer: torch.optim.Optimizer) -> int:
    """Values the optimizer keeps per trainable parameter: Adam-like 2 (first and second
    moments), SGD with momentum 1, else 0."""
    defaults = optimizer.defaults
    if "betas" in defaults:
        return 2
    return 1 if defaults.get("momentum") else 0


def memory_estimate(model: nn.Module, optimizer: torch.optim.Optimizer,
                    strategy: SingleProcess) -> str:
    """`parameters 87 MB, gradients 87 MB, optimizer state 174 MB (...) = 348 MB`: a sharded
    strategy holds 1/N of each on a rank."""
    share = strategy.world.size if strategy.shards_state else 1
    params = sum(p.numel() * p.element_size() for p in model.parameters()) / share
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trainable) / share
    values = optimizer_values(optimizer)
    states = values * sum(p.numel() * 4 for p in trainable) / share  # fp32 state
    mb = 1 << 20
    split = f", sharded over {share} ranks" if share > 1 else ""
    return (f"parameters {params / mb:,.0f} MB, gradients {grads / mb:,.0f} MB, optimizer state "
            f"{states / mb:,.0f} MB ({type(optimizer).__name__}: {values} per trainable "
            f"parameter{split}) = {(params + grads + states) / mb:,.0f} MB before activations")
