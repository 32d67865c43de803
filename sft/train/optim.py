"""Optimizer and LR schedule construction.

`optimizer` and `scheduler` configs are Hydra `_target_` + `_partial_` nodes, so any
torch optimizer or schedule can be named. Four keys of the optimizer node are ours, not the
optimizer's: `weight_decay` is applied only to weight matrices (never biases or norms),
`layer_decay` scales each layer's LR by decay^(distance from the top), and `l2` / `l1` add
l2 * ||theta||^2 + l1 * ||theta||_1 to the loss (see Penalty).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import instantiate
from torch.optim.lr_scheduler import LambdaLR

from sft.errors import ConfigError
from sft.models.freezing import is_embedding, layer_index, num_layers

_PENALTIES = ("l1", "l2")


class Penalty:
    """`optimizer.l2 * ||theta||^2 + optimizer.l1 * ||theta||_1`, added to the loss as written
    (coupled: the gradient gains 2 * l2 * theta + l1 * sign(theta), which an adaptive optimizer
    then rescales, unlike AdamW's decoupled weight_decay). theta is every trainable parameter,
    biases and norms included, as the formula says; frozen weights are no parameters of the fit.
    False when both are 0: the loop then does no extra work."""

    def __init__(self, model: torch.nn.Module, node: dict[str, Any]) -> None:
        self.l1, self.l2 = (float(node.get(key) or 0.0) for key in _PENALTIES)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __bool__(self) -> bool:
        return bool(self.params) and bool(self.l1 or self.l2)

    def __call__(self) -> torch.Tensor:
        """The penalty as a differentiable fp32 scalar."""
        total = torch.zeros((), device=self.params[0].device)
        if self.l2:
            total = total + self.l2 * torch.stack([p.float().square().sum() for p in self.params]).sum()
        if self.l1:
            total = total + self.l1 * torch.stack([p.float().abs().sum() for p in self.params]).sum()
        return total


def decays(name: str, param: torch.Tensor) -> bool:
    """Weight decay applies to weight matrices only: not biases, LayerNorm or other norms."""
    lowered = name.lower()
    return param.ndim >= 2 and "norm" not in lowered and not lowered.endswith(".bias")


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float,
                 layer_decay: float | None) -> list[dict[str, Any]]:
    """Parameter groups keyed by (decay?, depth); depth 0 = embeddings, L+1 = head."""
    depth_count = num_layers(model)  # type: ignore[arg-type]
    groups: dict[tuple[bool, int], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        index = layer_index(name)
        depth = 0 if index is None and is_embedding(name) else (
            depth_count + 1 if index is None else index + 1)
        scale = layer_decay ** (depth_count + 1 - depth) if layer_decay else 1.0
        decay = decays(name, param)
        group = groups.setdefault((decay, depth), {
            "params": [], "names": [], "lr": lr * scale,
            "weight_decay": weight_decay if decay else 0.0,
        })
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: torch.nn.Module, node: dict[str, Any]) -> torch.optim.Optimizer:
    node = dict(node)
    weight_decay = float(node.pop("weight_decay", 0.0) or 0.0)
    layer_decay = node.pop("layer_decay", None)
    for key in _PENALTIES:  # terms of the loss (Penalty), not optimizer arguments
        node.pop(key, None)
    groups = param_groups(model, float(node["lr"]), weight_decay, layer_decay)
    for group in groups:
        group.pop("names")
    try:
        factory = instantiate(node)
        return factory(groups)
    except TypeError as err:
        raise ConfigError(f"optimizer {node.get('_target_')}: {err}; check the optimizer.* keys "
                          "against its signature") from err
    except Exception as err:
        raise ConfigError(f"cannot build optimizer {node.get('_target_')}: "
                          f"{str(err).splitlines()[0]}") from err


def warmup_steps(warmup: float, total_steps: int) -> int:
    """`warmup` < 1 is a fraction of the total steps, >= 1 a number of steps."""
    if warmup < 0:
        raise ConfigError(f"scheduler.warmup must be >= 0, got {warmup}")
    return round(warmup * total_steps) if warmup < 1 else int(warmup)


def _with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float,
                 decay: Callable[[int, int], float]) -> LambdaLR:
    """Linear warmup from 0 (factor t / W, as the HF schedules), then
    `decay(steps_since_warmup, decay_length)`."""
    n_warm = warmup_steps(warmup, total_steps)

    def factor(step: int) -> float:
        if step < n_warm:
            return step / n_warm
        return decay(step - n_warm, max(1, total_steps - n_warm))

    return LambdaLR(optimizer, factor)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup: float = 0.0) -> LambdaLR:
    return _with_warmup(optimizer, total_steps, warmup, lambda t, n: max(0.0, 1 - t / n))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.0,
                    min_ratio: float = 0.0) -> LambdaLR:
    return _with_warmup(optimizer, total_steps, warmup, lambda t, n: min_ratio + (1 - min_ratio)
                        * 0.5 * (1 + math.cos(math.pi * min(t, n) / n)))


def constant_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                      warmup: float = 0.0) -> LambdaLR:
    return _with_warmup(optimizer, total_steps, warmup, lambda t, n: 1.0)


def exponential_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.0,
                         decay_rate: float = 0.96, decay_steps: int = 1000) -> LambdaLR:
    """lr_t = lr_0 * decay_rate ** (t / decay_steps), t counted after warmup."""
    return _with_warmup(optimizer, total_steps, warmup,
                        lambda t, n: decay_rate ** (t / decay_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, node: dict[str, Any],
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    try:
        factory = instantiate(dict(node))
        accepts = inspect.signature(factory.func).parameters
        extra = {"total_steps": total_steps} if "total_steps" in accepts else {}
        return factory(optimizer, **extra)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"cannot build scheduler {node.get('_target_')}: "
                          f"{str(err).splitlines()[0]}") from err
