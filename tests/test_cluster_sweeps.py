"""Sweeps whose jobs run in other processes (submitit: Slurm, or its local executor), and the
optional Hydra plugins (`sft[optuna]`, `sft[slurm]`) when they are not installed."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_cli

# `python -c`: sft's command line in a Python where Hydra finds neither plugin, as if the
# extras were not installed (Hydra registers a plugin's configs when it imports the package)
WITHOUT_PLUGINS = """
import pkgutil, sys
walk = pkgutil.walk_packages
pkgutil.walk_packages = lambda *a, **k: (m for m in walk(*a, **k)
                                         if not m.name.startswith(("hydra_plugins.hydra_optuna",
                                                                   "hydra_plugins.hydra_submitit")))
sys.modules.update(optuna=None, submitit=None)
from sft.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def small(data_dir: Path, cache_dir: Path) -> list[str]:
    return ["experiment=sst2-tiny-smoke", *TINY, f"data.dir={data_dir}",
            f"data.cache_dir={cache_dir}", "data.max_train_samples=64",
            "data.max_eval_samples=32", "trainer.max_steps=2", "trainer.eval_steps=2",
            "trainer.log_steps=2", "trainer.keep_last=1"]


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_job_in_its_own_process(small: list[str],
                                                               tmp_path: Path) -> None:
    # no hydra.sweep.dir: the jobs, started seconds later, must still agree with this process
    # on multiruns/<start time>/ (the start time travels inside the pickled task function)
    result = run_cli("train", "--multirun", "hydra/launcher=submitit_local", *small,
                     "optimizer.lr=1e-3,5e-3,-1", cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 1, result.stderr[-3000:]  # exit status = failed jobs
    assert "1 of 3 jobs failed" in result.stderr
    [sweep] = (tmp_path / "multiruns").iterdir()
    logs = sorted(p.name for p in (sweep / ".submitit").glob("*/*_log.err"))
    assert len(logs) == 3, logs  # one submitit job per sweep job
    for job in "01":
        run = sweep / job
        for name in ("config.yaml", "env.json", "metrics.json", ".hydra/overrides.yaml",
                     "best/model.safetensors"):
            assert (run / name).exists(), f"{run}/{name} missing"
        assert json.loads((run / "job.json").read_text())["status"] == "complete"
        assert re.search(r"train \d+, validation \d+", (run / "train.log").read_text())
    failed = json.loads((sweep / "2" / "job.json").read_text())
    assert "optimizer.lr must be a positive" in failed["error"]
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["swept"] == ["optimizer.lr"] and summary["failed"] == 1
    ranked = summary["jobs"]
    assert [j["status"] for j in ranked] == ["complete", "complete", "failed"]
    assert ranked[0]["value"] >= ranked[1]["value"]  # accuracy: best first
    assert "3 jobs, ranked by validation/accuracy" in result.stderr + result.stdout


def test_slurm_launcher_config_reaches_sbatch(tmp_path: Path) -> None:
    # a stand-in sbatch keeps the script submitit wrote and refuses it, as Slurm does for an
    # unknown partition: the sweep stops with one line that passes sbatch's reason on
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/job.sh\n'
                      'echo "sbatch: error: invalid partition specified: gpu" >&2\nexit 1\n')
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    srun = bin_dir / "srun"  # submitit looks for it before it submits anything
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    result = run_cli("train", "--multirun", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                     "hydra.launcher.array_parallelism=1",
                     *TINY, "optimizer.lr=1e-3,5e-3", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                     env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: no sweep job started: sbatch: error: invalid partition specified: gpu")
    assert "Traceback" not in result.stderr
    script = (tmp_path / "job.sh").read_text()
    for line in ("--partition=gpu", "--array=0-1%1", "--gpus-per-node=1", "--time=240",
                 "--ntasks-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--job-name=sft-sentiment"):
        assert f"#SBATCH {line}\n" in script, line
    assert "-m submitit.core._submit" in script


@pytest.mark.parametrize("args, extra", [
    (["hparams_search=optuna"], "optuna"),
    (["--multirun", "hydra/launcher=slurm"], "slurm"),
])
def test_a_missing_plugin_names_the_extra_to_install(args: list[str], extra: str) -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_PLUGINS, "train", *TINY, *args],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: hydra/") and line.endswith(f"run pip install 'sft[{extra}]'")
