"""The run's counters: what metrics.json reports and what a logging window averages, and
where the run's wall time went (PHASES, reported as `time/<phase>_s`).

Everything here is part of a checkpoint (state_dict), so a resumed run logs exactly what
an uninterrupted one would. The window's loss sum stays on the device: reading it back
every step would make the host wait for the device.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
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


# where a run's time goes: waiting for the next batch, the forward (with the loss), the
# backward, the optimizer step (clipping, update, schedule), evaluation, checkpoint writes;
# the rest (logging, host syncs, the loop itself) is `other`. Host time: on a GPU the kernels
# run asynchronously, so a phase is charged for the time the host waited in it.
PHASES = ("data", "forward", "backward", "optimizer", "evaluation", "checkpoint")


@dataclass
class Meter:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    run: Totals = field(default_factory=Totals)
    window: Totals = field(default_factory=Totals)  # its loss lives in window_loss until read
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def __post_init__(self) -> None:
        self.window_loss = torch.zeros((), device=self.device)
        self.started = time.perf_counter() - sum(self.phases.values())

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] += time.perf_counter() - start

    def breakdown(self) -> dict[str, float]:
        """Seconds per phase since the loop started (`other`: the rest of the wall time)."""
        wall = time.perf_counter() - self.started
        return {**{f"time/{k}_s": round(v, 3) for k, v in self.phases.items()},
                "time/other_s": round(max(0.0, wall - sum(self.phases.values())), 3),
                "time/wall_s": round(wall, 3)}

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
                "window_loss": float(self.window_loss), "phases": dict(self.phases),
                "wall": time.perf_counter() - self.started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run, self.window = Totals(**state["run"]), Totals(**state["window"])
        self.window_loss.fill_(state["window_loss"])
        self.phases.update(state.get("phases", {}))  # a resumed run counts on from there
        self.started = time.perf_counter() - state.get("wall", sum(self.phases.values()))
