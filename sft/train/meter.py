"""The run's counters: what metrics.json reports and what a logging window averages.

Everything here is part of a checkpoint (state_dict), so a resumed run logs exactly what
an uninterrupted one would. The window's loss sum stays on the device: reading it back
every step would make the host wait for the device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Totals:
    loss: float = 0.0  # summed per-target losses
    targets: int = 0
    examples: int = 0
    tokens: int = 0  # real input tokens
    positions: int = 0  # input positions computed, padding included
    steps: int = 0
    seconds: float = 0.0

    def add(self, other: Totals) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


@dataclass
class Meter:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    run: Totals = field(default_factory=Totals)
    window: Totals = field(default_factory=Totals)  # its loss lives in window_loss until read

    def __post_init__(self) -> None:
        self.window_loss = torch.zeros((), device=self.device)

    def add_step(self, loss_sum: torch.Tensor, examples: int, tokens: int, targets: int,
                 positions: int = 0) -> None:
        """One optimizer step: `loss_sum` this rank's, the counts over all ranks."""
        self.window_loss += loss_sum
        self.window.examples += examples
        self.window.tokens += tokens
        self.window.targets += targets
        self.window.positions += positions
        self.window.steps += 1

    def close_window(self, global_loss_sum: float, seconds: float) -> dict[str, float]:
        """Fold the window into the run totals; returns its mean loss and throughput."""
        self.window.loss, self.window.seconds = global_loss_sum, seconds
        result = {"loss": global_loss_sum / max(1, self.window.targets),
                  "samples_per_s": self.window.examples / max(seconds, 1e-9),
                  "tokens_per_s": self.window.tokens / max(seconds, 1e-9)}
        self.run.add(self.window)
        self.window = Totals()
        self.window_loss.zero_()
        return result

    def summary(self) -> dict[str, float]:
        r = self.run
        return {"train/loss": r.loss / max(1, r.targets), "train/samples": r.examples,
                "train/runtime_s": round(r.seconds, 3),
                "train/samples_per_s": r.examples / max(r.seconds, 1e-9),
                "train/tokens_per_s": r.tokens / max(r.seconds, 1e-9),
                # trained tokens (loss targets) and the share of computed positions that are
                # padding: what packing and length grouping change
                "train/targets_per_s": r.targets / max(r.seconds, 1e-9),
                "train/padding_fraction": 1 - r.tokens / r.positions if r.positions else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {"run": asdict(self.run), "window": asdict(self.window),
                "window_loss": float(self.window_loss)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run, self.window = Totals(**state["run"]), Totals(**state["window"])
        self.window_loss.fill_(state["window_loss"])
