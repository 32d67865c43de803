"""Sweeps end to end: grid multirun, failing jobs, Optuna, `sft report`, `sft cv`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY, read_jsonl, run_cli

from sft.report.jobs import collect
from sft.report.summary import summarize
from sft.run.rundir import write_job_record

SUMMARY_FILES = ("summary.json", "summary.csv", "curves.png", "hparams.png")


@pytest.fixture(scope="module")
def small(data_dir: Path, cache_dir: Path) -> list[str]:
    """A seconds-long job: the smoke experiment made smaller still."""
    return ["experiment=sst2-tiny-smoke", *TINY, f"data.dir={data_dir}",
            f"data.cache_dir={cache_dir}", "data.max_train_samples=128",
            "data.max_eval_samples=64", "trainer.max_steps=2", "trainer.eval_steps=2",
            "trainer.log_steps=2", "trainer.keep_last=1"]


@pytest.fixture(scope="module")
def grid(small: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep = tmp_path_factory.mktemp("grid")
    result = run_cli("train", "--multirun", *small, "optimizer.lr=1e-3,5e-3", "seed=1,2",
                     f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


def test_grid_sweep_makes_complete_run_dirs_and_a_summary(grid: Path) -> None:
    for job in "0123":
        run = grid / job
        for name in ("config.yaml", "env.json", "metrics.json", "metrics.jsonl", "train.log",
                     "job.json", ".hydra/overrides.yaml", "best/model.safetensors"):
            assert (run / name).exists(), f"{run}/{name} missing"
        assert json.loads((run / "job.json").read_text())["status"] == "complete"
    summary = json.loads((grid / "summary.json").read_text())
    assert summary["swept"] == ["optimizer.lr", "seed"]
    assert summary["failed"] == 0
    values = [j["value"] for j in summary["jobs"]]
    assert values == sorted(values, reverse=True)  # accuracy: best first
    # Hydra writes the swept values back as floats
    assert {g["params"]["optimizer.lr"]: g["n"] for g in summary["groups"]} == {"0.001": 2,
                                                                                 "0.005": 2}
    rows = (grid / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("job,optimizer.lr,seed,status,validation/accuracy")
    assert len(rows) == 5
    for name in ("curves.png", "hparams.png"):
        assert (grid / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rebuilds_the_summary(grid: Path, tmp_path: Path) -> None:
    before = json.loads((grid / "summary.json").read_text())
    copy = tmp_path / "sweep"
    shutil.copytree(grid, copy)
    for name in SUMMARY_FILES:
        (copy / name).unlink()
    result = run_cli("report", str(copy))
    assert result.returncode == 0, result.stderr
    after = json.loads((copy / "summary.json").read_text())
    key = [(j["name"], j["value"], j["status"]) for j in before["jobs"]]
    assert [(j["name"], j["value"], j["status"]) for j in after["jobs"]] == key
    assert all((copy / name).is_file() for name in SUMMARY_FILES)
    assert "4 jobs, ranked by validation/accuracy" in result.stdout
    assert "mean ± std over seed" in result.stdout


def test_failing_jobs_are_recorded_and_the_sweep_goes_on(small: list[str], tmp_path: Path) -> None:
    # -1 fails validation before training; 1e30 diverges to a NaN loss while training
    result = run_cli("train", "--multirun", *small, "optimizer.lr=1e-3,-1,1e30",
                     f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-3000:]  # exit status = failed jobs
    assert "2 of 3 jobs failed" in result.stderr
    assert (tmp_path / "0" / "best").is_dir()
    bad_value = json.loads((tmp_path / "1" / "job.json").read_text())
    assert bad_value["status"] == "failed" and "optimizer.lr must be a positive" in bad_value["error"]
    diverged = json.loads((tmp_path / "2" / "job.json").read_text())
    assert diverged["status"] == "failed" and "loss is nan" in diverged["error"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["complete", "failed", "failed"]
    assert summary["failed"] == 2


def test_optuna_search_runs_trials_in_the_search_space(small: list[str], tmp_path: Path) -> None:
    result = run_cli("train", *small, "hparams_search=optuna", "hydra.sweeper.n_trials=3",
                     f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Directions: ['maximize']" in result.stdout + result.stderr  # accuracy: higher is better
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["jobs"]) == 3
    assert best["best_value"] == pytest.approx(summary["jobs"][0]["value"])
    for job in summary["jobs"]:
        assert 1e-5 <= float(job["params"]["optimizer.lr"]) <= 3e-4
        assert job["params"]["trainer.batch_size"] in {"16", "32", "64"}


def test_cv_trains_one_run_per_fold(small: list[str], tmp_path: Path) -> None:
    result = run_cli("cv", *small, "folds=3",
                     f"run_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = []
    for k in range(3):
        fold = tmp_path / f"fold-{k}"
        assert (fold / "metrics.json").is_file() and (fold / "best").is_dir()
        assert any(r["split"] == "validation" for r in read_jsonl(fold / "metrics.jsonl"))
        found = re.search(r"train (\d+), validation (\d+)", (fold / "train.log").read_text())
        sizes.append((int(found[1]), int(found[2])))
    assert sizes == [(128, 64)] * 3  # 128 train + 64 validation pooled, three equal folds
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["swept"] == ["data.fold"] and summary["groups"][0]["n"] == 3
    assert "mean ± std over fold" in result.stderr


@pytest.mark.slow
def test_reproduce_of_a_cv_fold_retrains_that_fold(small: list[str], tmp_path: Path) -> None:
    result = run_cli("cv", *small, "folds=2", f"run_dir={tmp_path / 'cv'}")
    assert result.returncode == 0, result.stderr[-3000:]
    again = tmp_path / "again"
    result = run_cli("reproduce", str(tmp_path / "cv" / "fold-0"), f"run_dir={again}")
    assert "train 96, validation 96" in (again / "train.log").read_text()  # the fold's halves
    assert result.returncode == 0, result.stderr[-3000:]


def _fake_run(path: Path, value: float | None, seed: int, lr: str, greater: bool) -> None:
    write_job_record(path, [f"optimizer.lr={lr}", f"seed={seed}"], 1.0,
                     None if value is not None else "boom")
    (path / "config.yaml").write_text(yaml.safe_dump({"task": {"greater_is_better": greater}}))
    if value is not None:
        (path / "metrics.json").write_text(json.dumps(
            {"best/value": value, "best/step": 10, "best/metric": "validation/loss"}))


def test_summary_ranks_by_direction_and_averages_over_seeds(tmp_path: Path) -> None:
    for i, (value, seed, lr) in enumerate([(0.5, 1, "1e-3"), (0.3, 2, "1e-3"), (0.2, 1, "1e-4"),
                                           (0.4, 2, "1e-4"), (None, 3, "1e-4")]):
        _fake_run(tmp_path / str(i), value, seed, lr, greater=False)
    summary = summarize(collect([tmp_path]))
    assert [j.name for j in summary.jobs] == ["2", "1", "3", "0", "4"]  # lower loss first
    assert summary.jobs[-1].status == "failed"
    groups = {g["params"]["optimizer.lr"]: g for g in summary.groups}
    assert groups["1e-4"]["mean"] == pytest.approx(0.3) and groups["1e-4"]["failed"] == 1
    assert groups["1e-3"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert [g["params"]["optimizer.lr"] for g in summary.groups] == ["1e-4", "1e-3"]


@pytest.mark.parametrize("extra, direction", [([], "maximize"),
                                              (["trainer.metric=loss"], "minimize")])
def test_optuna_direction_follows_the_task_metric(extra: list[str], direction: str) -> None:
    from hydra import compose, initialize_config_dir

    from sft.config.compose import CONFIG_DIR
    from sft.config.resolvers import register

    register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna", *extra],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == direction
    assert cfg.hydra.mode.name == "MULTIRUN"
