"""logger=tensorboard|mlflow|wandb: each tracker holds exactly the records of metrics.jsonl,
a resumed run continues the same tracker run without duplicate points, and a missing package
is a one-line error naming the extra to install (CPU, tiny-bert)."""

from __future__ import annotations

import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import SHORT, TINY, kill_at_checkpoint, read_jsonl, run_cli, short_args, train_tiny

from sft.cli import main
from sft.config.schema import LoggerConfig
from sft.errors import ConfigError
from sft.run.rundir import is_timing
from sft.tracking.trackers import TRACKER_FILE, require, scalars

SHORT_ONLY = SHORT[len(TINY):]  # the short run's settings; train_tiny adds TINY and the data


def expected(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as the trackers must hold it: `split/name` -> [(step, value)]."""
    points = defaultdict(list)
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        for key, value in scalars(record).items():
            points[key].append((record["step"], value))
    return dict(points)


def test_tensorboard_scalars_equal_metrics_jsonl(tmp_path: Path, data_dir: Path,
                                                 cache_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = train_tiny(tmp_path / "run", data_dir, cache_dir, *SHORT_ONLY,
                         "logger=tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    got = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    want = expected(run_dir)
    assert {"train/loss", "train/lr", "validation/accuracy", "validation/loss"} <= set(want)
    assert set(got) == set(want)
    for tag, points in want.items():  # event files hold float32
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def mlflow_points(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics}


def test_mlflow_resume_after_sigkill_continues_one_run(tmp_path: Path, data_dir: Path,
                                                        cache_dir: Path) -> None:
    import mlflow  # the mlflow extra: make install installs it
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    kill_at_checkpoint([*short_args(data_dir, cache_dir), f"run_dir={run_dir}", "logger=mlflow",
                        f"logger.tracking_uri={uri}", "logger.experiment=trackers"], run_dir, 9)
    # resume from step 6: the train record at step 8, already in mlflow, is replayed
    shutil.rmtree(run_dir / "checkpoints" / "step-9")
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / TRACKER_FILE).read_text())["run_id"]
    assert 8 in [s for s, _ in mlflow_points(client, run_id)["train/loss"]]
    assert client.get_run(run_id).info.status == "RUNNING"  # SIGKILL: nothing could close it

    result = run_cli("train", f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]

    runs = client.search_runs([client.get_experiment_by_name("trackers").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"
    want = {key: sorted(points) for key, points in expected(run_dir).items()}
    got = mlflow_points(client, run_id)
    assert {k: [s for s, _ in v] for k, v in got.items()} == {  # no step twice, every one once
        k: [s for s, _ in v] for k, v in want.items()}
    # the values too, but timings: mlflow keeps the killed process's measurement of step 8,
    # metrics.jsonl the replayed one (a metric history is append-only)
    assert {k: v for k, v in got.items() if not is_timing(k)} == {
        k: v for k, v in want.items() if not is_timing(k)}
    assert runs[0].data.params["optimizer.lr"] == "0.001"
    assert runs[0].data.params["model.name"] == "tiny-bert"
    assert {a.path for a in client.list_artifacts(run_id)} == {"best", "curves.png"}


def test_missing_tracker_package_is_one_line_error(tmp_path: Path, data_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails
    with pytest.raises(ConfigError, match=r"pip install 'sft\[mlflow\]'"):
        require(LoggerConfig(type="mlflow"))
    code = main(["train", "model=tiny-bert", "hardware=cpu", f"data.dir={data_dir}",
                 f"run_dir={tmp_path / 'run'}", "logger=mlflow"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "\n" not in err and "sft[mlflow]" in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # failed before training


def test_wandb_offline_run_logs_every_record_without_network(tmp_path: Path, data_dir: Path,
                                                             cache_dir: Path) -> None:
    import wandb  # noqa: F401  (the wandb extra: make install installs it)
    run_dir = train_tiny(tmp_path / "run", data_dir, cache_dir, *SHORT_ONLY,
                         "logger=wandb")
    state = json.loads((run_dir / TRACKER_FILE).read_text())
    assert state["sent"] == len(read_jsonl(run_dir / "metrics.jsonl"))
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    assert (offline / f"run-{state['id']}.wandb").is_file()
