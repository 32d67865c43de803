"""Experiment trackers as sinks (`logger=tensorboard|mlflow|wandb`): each receives exactly the
records of metrics.jsonl (scalars keyed `split/name` at the record's `step`), the resolved
config as params, and best/ and curves.png as artifacts when the run ends.

A resumed run continues the same tracker run, whose id is kept in <run_dir>/tracker.json. It
replays the records logged after its checkpoint (metrics.jsonl is cut back to it), and none
reaches a tracker twice: tensorboard purges the steps after the checkpoint (`purge_step`),
mlflow skips the points its history already holds, wandb (offline: nothing to ask) skips the
records tracker.json counts as sent. Only rank 0 logs.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

from sft.config.schema import LoggerConfig, RunConfig
from sft.errors import ConfigError
from sft.files import write_text_atomic
from sft.tracking.curves import CURVES_FILE
from sft.tracking.sinks import Sink

log = logging.getLogger("sft")

TRACKER_FILE = "tracker.json"
TENSORBOARD_DIR = "tensorboard"
BEST_DIR = "best"
# what to install when a tracker's package is missing (tensorboard is a core dependency)
INSTALL = {"tensorboard": "tensorboard", "mlflow": "'sft[mlflow]'", "wandb": "'sft[wandb]'"}


def require(logger: LoggerConfig) -> ModuleType | None:
    """The tracker's package (None for logger=none); a missing one is a ConfigError naming
    what to install. Called before the run loads anything, so it fails in a second."""
    if logger.type == "none":
        return None
    try:
        return importlib.import_module(logger.type)
    except ImportError as err:
        raise ConfigError(f"logger={logger.type} needs the {logger.type} package, which is not "
                          f"installed: pip install {INSTALL[logger.type]} (or use logger=none)"
                          ) from err


def params(run: RunConfig) -> dict[str, Any]:
    """The resolved config flattened to dotted keys; lists and empty dicts as JSON text."""
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            elif value is None or isinstance(value, (str, int, float, bool)):
                flat[prefix + key] = value
            else:
                flat[prefix + key] = json.dumps(value)

    walk(dataclasses.asdict(dataclasses.replace(run, resume=None)), "")
    return flat


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record's numbers keyed `split/name` (`validation/accuracy`)."""
    split = record.get("split", "train")
    return {f"{split}/{key}": float(value) for key, value in record.items()
            if key not in ("split", "step") and isinstance(value, (int, float))
            and not isinstance(value, bool)}


def artifacts(run_dir: Path) -> list[Path]:
    """best/ and curves.png, those that exist when the run ends."""
    return [p for p in (run_dir / BEST_DIR, run_dir / CURVES_FILE) if p.exists()]


def read_state(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / TRACKER_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    write_text_atomic(run_dir / TRACKER_FILE, json.dumps(state, indent=2) + "\n")


def default_store(run_dir: Path) -> str:
    """sqlite under the top folder of the run dir (runs/mlflow.db for runs/<task>/<model>/<time>,
    multiruns/mlflow.db for sweeps), or beside an absolute run dir: one store for the runs to
    compare, fast and offline (mlflow 3 refuses its old file store unless told to)."""
    top = run_dir.parent if run_dir.is_absolute() or len(run_dir.parts) < 2 else Path(run_dir.parts[0])
    top.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{top.resolve() / 'mlflow.db'}"


class TensorBoardTracker:
    """Event files in <run_dir>/tensorboard; the config in the HPARAMS tab."""

    def __init__(self, run: RunConfig, run_dir: Path, replay_from: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step: tensorboard hides what a killed run logged from this step on
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=replay_from)
        if replay_from is None:
            for summary in hparams({k: "null" if v is None else v
                                    for k, v in params(run).items()}, {}):
                self.writer.file_writer.add_summary(summary)
        write_state(run_dir, {"type": "tensorboard", "logdir": str(run_dir / TENSORBOARD_DIR)})

    def log(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=record.get("step", 0))

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowTracker:
    """One mlflow run: params, metrics by step, best/ and curves.png as artifacts, and the
    run's outcome as its status."""

    STATUS = {"complete": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

    def __init__(self, run: RunConfig, run_dir: Path, state: dict[str, Any] | None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        lg = run.logger
        self.run_dir, self.upload = run_dir, lg.artifacts
        uri = state["tracking_uri"] if state else lg.tracking_uri or default_store(Path(run.run_dir))
        self.client = MlflowClient(tracking_uri=uri)
        self.seen: Counter[tuple[str, int]] = Counter()  # points a killed process logged
        if state:
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            for key in self.client.get_run(self.run_id).data.metrics:
                self.seen.update((key, m.step) for m in self.client.get_metric_history(
                    self.run_id, key))
            return
        name = lg.experiment or run.task.name
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            experiment = found.experiment_id
        else:  # artifacts beside a local store, not in the current folder
            db = uri.removeprefix("sqlite:///")
            location = (Path(db).resolve().parent / "mlartifacts").as_uri() if db != uri else None
            experiment = self.client.create_experiment(name, artifact_location=location)
        self.run_id = self.client.create_run(
            experiment, run_name=lg.name or str(run.run_dir),
            tags={"sft.run_dir": str(run_dir.resolve())}).info.run_id
        write_state(run_dir, {"type": "mlflow", "run_id": self.run_id, "tracking_uri": uri,
                              "experiment_id": experiment})
        items = [Param(k, str(v)) for k, v in params(run).items()]
        for i in range(0, len(items), 100):  # mlflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, now = int(record.get("step", 0)), int(time.time() * 1000)
        metrics = []
        for key, value in scalars(record).items():
            if self.seen[(key, step)]:  # replayed after a resume: already in the history
                self.seen[(key, step)] -= 1
                continue
            metrics.append(Metric(key, value, now, step))
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str) -> None:
        for path in artifacts(self.run_dir) if self.upload else []:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "FAILED"))


class WandbTracker:
    """A wandb run, offline unless logger.mode says otherwise (never a login prompt). Points
    are plotted against `step` (several splits share a step; the test record goes back to
    the best step, which wandb's own monotonic step would drop)."""

    EXIT = {"complete": 0, "failed": 1, "interrupted": 130}

    def __init__(self, run: RunConfig, run_dir: Path, state: dict[str, Any] | None,
                 metrics_log: Path) -> None:
        import wandb

        lg = run.logger
        self.run_dir, self.upload, self.metrics_log = run_dir, lg.artifacts, metrics_log
        self.run = wandb.init(
            project=lg.experiment or run.task.name, entity=lg.entity,
            name=lg.name or str(run.run_dir), id=state["id"] if state else None,
            resume="allow" if state else None, dir=str(run_dir), mode=lg.mode,  # type: ignore[arg-type]
            config=params(run), reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        self.run.define_metric("*", step_metric="step")
        self.sent = state["sent"] if state else 0  # records of metrics.jsonl already sent
        self.index: int | None = None  # this record's line in metrics.jsonl
        self.state = {"type": "wandb", "id": self.run.id, "sent": self.sent}
        write_state(run_dir, self.state)

    def log(self, record: dict[str, Any]) -> None:
        if self.index is None:  # the jsonl sink (first) has written it, after any truncation
            self.index = len(self.metrics_log.read_text().splitlines()) - 1
        else:
            self.index += 1
        if self.index < self.sent:  # replayed after a resume: sent before the kill
            return
        self.run.log({"step": record.get("step", 0), **scalars(record)})
        self.state["sent"] = self.sent = self.index + 1
        write_state(self.run_dir, self.state)

    def close(self, status: str) -> None:
        import wandb

        paths = artifacts(self.run_dir) if self.upload else []
        if paths:
            artifact = wandb.Artifact(f"run-{self.run.id}", type="model")
            for path in paths:
                if path.is_dir():
                    artifact.add_dir(str(path), name=path.name)
                else:
                    artifact.add_file(str(path))
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=self.EXIT.get(status, 1))


class Guarded:
    """A tracker whose failure at the end is a warning: the run's own outcome (and its
    exception, if any) matters more than the upload."""

    def __init__(self, tracker: Sink, name: str) -> None:
        self.tracker, self.name = tracker, name

    def log(self, record: dict[str, Any]) -> None:
        self.tracker.log(record)

    def close(self, status: str) -> None:
        try:
            self.tracker.close(status)
        except Exception as err:
            log.warning("logger=%s could not close its run (%s: %s); metrics.jsonl has every "
                        "record", self.name, type(err).__name__, err)


def trackers(run: RunConfig, run_dir: Path, metrics_log: Path, replay_from: int | None,
             is_main: bool = True) -> list[Sink]:
    """The tracker `run.logger` chooses, as sinks ([] for logger=none and on ranks other than
    0). `replay_from`: None for a new run; for a resumed one, the first step it logs again."""
    kind = run.logger.type
    if kind == "none" or not is_main:
        return []
    require(run.logger)
    state = read_state(run_dir) if replay_from is not None else None
    if state is not None and state.get("type") != kind:
        log.warning("%s holds a %s run, not %s: starting a new tracker run", TRACKER_FILE,
                    state.get("type"), kind)
        state = None
    tracker: Sink
    if kind == "tensorboard":
        tracker = TensorBoardTracker(run, run_dir, replay_from)
    elif kind == "mlflow":
        tracker = MlflowTracker(run, run_dir, state)
    else:
        tracker = WandbTracker(run, run_dir, state, metrics_log)
    return [Guarded(tracker, kind)]
