"""SIGINT / SIGTERM during training: finish the current step, save a checkpoint, stop.

The trainer polls `StopOnSignals.received` after each optimizer step; a second signal gets
the previous handler back (Ctrl-C twice stops at once, without saving). In a process of several,
a repeat within ECHO_S seconds is the same stop arriving twice (Ctrl-C reaches a launcher and
its workers, and the launcher signals them again) and is ignored.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
ECHO_S = 2.0


class TrainingInterrupted(BaseException):
    """Raised once the checkpoint is saved. A BaseException, like KeyboardInterrupt, so a job
    wrapper does not record it as a failed job and a sweep stops instead of going on."""

    def __init__(self, signum: int, step: int, run_dir: Path, saved: bool = True) -> None:
        self.signum, self.step, self.run_dir, self.saved = signum, step, run_dir, saved
        where = (f"stopped after step {step}, checkpoint saved in {run_dir}/checkpoints/"
                 f"step-{step}" if saved else "stopped before any checkpoint was saved")
        super().__init__(f"{signal.Signals(signum).name}: {where}; resume with: "
                         f"sft train resume={run_dir}")

    def __reduce__(self) -> tuple:  # a worker process returns it to the launcher
        return TrainingInterrupted, (self.signum, self.step, self.run_dir, self.saved)

    @property
    def exit_code(self) -> int:
        """128 + signal number, the shell's convention (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class StopOnSignals:
    """Context manager that turns SIGINT/SIGTERM into a flag (main thread only)."""

    def __init__(self, echo_s: float = 0.0) -> None:
        self.received: int | None = None
        self.echo_s, self._first = echo_s, 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.received is not None and now - self._first < self.echo_s:
            return  # the same stop again: a launcher forwarding what the terminal or Slurm
            # already sent to every process
        if self.received is not None:
            self._restore()
            signal.raise_signal(signum)  # the second stop: at once, without saving
            return
        self.received, self._first = signum, now
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
