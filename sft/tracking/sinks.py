"""Where metrics go: every logging window and evaluation record passes through the sinks.

`metrics.jsonl` is always written (and is what a resumed run cuts back to its checkpoint);
experiment trackers (tensorboard, mlflow, ...) are further sinks of the same records.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("sft")


class Sink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self, status: str) -> None: ...


class JsonlSink:
    """One JSON object per line; `size` / `truncate` let a checkpoint record the offset."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")

    def size(self) -> int:
        return self.path.stat().st_size if self.path.is_file() else 0

    def truncate(self, size: int) -> None:
        """Drop what was logged after a checkpoint, so a resumed run appends without
        duplicating (or half-written) records."""
        if not self.enabled:
            return
        if self.size() < size:
            log.warning("%s is shorter than when the checkpoint was saved (edited or lost?); "
                        "appending to it as it is", self.path)
        elif self.path.is_file():
            os.truncate(self.path, size)

    def close(self, status: str) -> None:
        pass


class Sinks:
    """The jsonl file first, then any trackers; each record goes to all of them."""

    def __init__(self, jsonl: JsonlSink, *trackers: Sink) -> None:
        self.jsonl = jsonl
        self.all: list[Sink] = [jsonl, *trackers]

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.all:
            sink.log(record)

    def close(self, status: str) -> None:
        for sink in self.all:
            sink.close(status)
