"""SIGINT / SIGTERM during training: finish the current step, save a checkpoint, stop.

The trainer polls `StopOnSignals.received` after each optimizer step; a second signal gets
the previous handler back (Ctrl-C twice stops at once, without saving).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(BaseException):
    """Raised once the checkpoint is saved. A BaseException, like KeyboardInterrupt, so a job
    wrapper does not record it as a failed job and a sweep stops instead of going on."""

    def __init__(self, signum: int, step: int, run_dir: Path) -> None:
        self.signum, self.step, self.run_dir = signum, step, run_dir
        super().__init__(f"{signal.Signals(signum).name}: stopped after step {step}, checkpoint "
                         f"saved in {run_dir}/checkpoints/step-{step}; resume with: "
                         f"sft train resume={run_dir}")

    @property
    def exit_code(self) -> int:
        """128 + signal number, the shell's convention (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class StopOnSignals:
    """Context manager that turns SIGINT/SIGTERM into a flag (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        self._restore()
        # os.write: safe inside a signal handler, unlike logging or rich
        os.write(2, f"\n{signal.Signals(signum).name} received: finishing this step and saving a "
                    "checkpoint (send it again to stop at once, without saving)\n".encode())

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._restore()
