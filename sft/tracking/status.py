"""status.json: whether a run is running, complete, failed or interrupted (what `sft runs`
shows). Written "running" (with pid and host) when training starts and with the outcome when
it ends; a SIGKILLed run never writes its end, so a "running" whose process is gone from this
host reads back as interrupted."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sft.files import write_text_atomic

STATUS_FILE = "status.json"


def _process(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a Linux process; None where /proc
    cannot tell (not Linux, or no such process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def _alive(pid: int, started: str | None) -> bool:
    """Whether the process that wrote the record still runs: a zombie is dead, and a reused
    pid has another start time."""
    found = _process(pid)
    if found is not None:
        state, start = found
        return state != "Z" and (started is None or start == started)
    if Path("/proc/self/stat").is_file():  # Linux, and no such process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _now() -> str:
    """Local time with its UTC offset; milliseconds, so runs started in one second still sort."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


class StatusSink:
    """Writes status.json at start ("running") and at close (the run's outcome)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        self.started = time.monotonic()
        pid = os.getpid()
        found = _process(pid)
        self.record: dict[str, Any] = {
            "status": "running", "pid": pid, "pid_start": found[1] if found else None,
            "host": socket.gethostname(),
            "started": _now()}
        self._write()

    def _write(self) -> None:
        if self.enabled:
            write_text_atomic(self.path, json.dumps(self.record, indent=2) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self, status: str) -> None:
        self.record.update(status=status, seconds=round(time.monotonic() - self.started, 3),
                           ended=_now())
        self._write()


def read_status(path: Path) -> dict[str, Any] | None:
    """The record in status.json (None if there is none); "running" becomes "interrupted"
    when its process is gone from this host (killed without a chance to write its end)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if (record.get("status") == "running" and record.get("host") == socket.gethostname()
            and isinstance(record.get("pid"), int)
            and not _alive(record["pid"], record.get("pid_start"))):
        record["status"] = "interrupted"
    return record
