"""Several processes started by `sft train` itself (parallel=ddp|fsdp, 2 gloo workers on CPU):
one run dir; DDP trains like one process with the same global batch; FSDP2 on tiny-llama
trains, its best/ loads in plain transformers, and a run killed with SIGKILL resumes (on 2
ranks, or on 1 process) to the metrics of an uninterrupted run; a dead rank or a SIGTERM to
the launcher ends the job cleanly and in bounded time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import COMMON, LOSS_RTOL, logged

from sft.config.schema import ParallelConfig
from sft.errors import ConfigError
from sft.parallel.world import World, from_environment
from tests.conftest import REPO, TINY, read_jsonl, run_cli, train_tiny

pytestmark = pytest.mark.slow

TWO = ["parallel.nproc_per_node=2"]
# FSDP2 reduce-scatters in another order than one process sums: fp32 measured ~1e-7 apart
FSDP_RTOL = 1e-4
TINY_LLAMA = ["task=instruction", "model=tiny-llama", "hardware=cpu", "trainer.progress=false",
              "data.max_train_samples=64", "data.max_eval_samples=16", "trainer.batch_size=4",
              "trainer.max_steps=6", "trainer.eval_steps=3", "trainer.save_steps=2",
              "trainer.log_steps=1", "optimizer.lr=3e-3", "task.num_samples=1",
              "task.generation.max_new_tokens=4", "trainer.keep_last=5"]


def start(*args: str, cwd: Path = REPO) -> subprocess.Popen:
    """`sft train` in a session of its own (the test can kill the launcher and its workers)."""
    return subprocess.Popen([sys.executable, "-m", "sft.cli", "train", *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def wait_for(ready, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the run ended or stalled before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.01)


def workers(launcher: int) -> list[int]:
    """The launcher's worker processes (multiprocessing spawn children), in rank order."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def final_metrics(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if isinstance(v, float)
            and not k.endswith(("_s", "_per_s"))}


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("fsdp") / "run"
    result = run_cli("train", *TINY_LLAMA, "parallel=fsdp", *TWO, f"data.dir={data_dir}",
                     f"data.cache_dir={cache_dir}", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded over 2 ranks" in result.stderr  # the memory line
    return run_dir


def test_one_command_ddp_writes_one_run_dir_and_trains_like_one_process(
        tmp_path: Path, data_dir: Path, cache_dir: Path) -> None:
    """8 examples on each of 2 workers = 16 in one process: the same loss curve."""
    work = tmp_path / "cwd"
    work.mkdir()
    result = run_cli("train", *COMMON, "parallel=ddp", *TWO, "trainer.batch_size=8",
                     f"data.dir={data_dir}", f"data.cache_dir={cache_dir}", cwd=work,
                     env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch: 8 examples per device x 2 processes x 1 accumulation step = 16" \
        in result.stderr
    assert "memory per rank (estimated): parameters" in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["runs"]  # no outputs/ of a second Hydra
    (ddp,) = (work / "runs" / "sentiment" / "tiny-bert").iterdir()
    assert (ddp / ".hydra" / "config.yaml").is_file() and (ddp / "best").is_dir()
    assert (ddp / "train.log").read_text().count("done:") == 1
    assert [e["step"] for e in read_jsonl(ddp / "metrics.jsonl") if e["split"] == "train"] \
        == [2, 4, 6, 8]
    metrics = json.loads((ddp / "metrics.json").read_text())
    assert metrics["train/samples"] == 8 * 16
    single = train_tiny(tmp_path / "single", data_dir, cache_dir, *COMMON,
                        "trainer.batch_size=16")
    for split, key in [("train", "loss"), ("validation", "loss")]:
        assert logged(ddp, split, key) == pytest.approx(logged(single, split, key), rel=LOSS_RTOL)


def test_fsdp_trains_tiny_llama_and_best_loads_in_transformers(fsdp_run: Path) -> None:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoModelForCausalLM

    losses = logged(fsdp_run, "validation", "loss")
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.05  # steps 0, 3, 6
    assert json.loads((fsdp_run / "metrics.json").read_text())["best/step"] == 6
    model = AutoModelForCausalLM.from_pretrained(fsdp_run / "best")  # plain transformers
    best = load_file(fsdp_run / "best" / "model.safetensors")
    # the sharded checkpoint of the same step, gathered into one file by torch's own tool
    dcp_to_torch_save(fsdp_run / "checkpoints" / "step-6" / "sharded", fsdp_run / "gathered.pt")
    gathered = torch.load(fsdp_run / "gathered.pt", weights_only=False)["model"]
    assert set(best) <= set(gathered)
    assert all(torch.equal(best[k], gathered[k]) for k in best)
    state = model.state_dict()
    assert all(torch.equal(state[k], best[k]) for k in best)
    ids = torch.tensor([[1, 2, 3]])
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 6)


@pytest.mark.parametrize("resumed_on", ["2 ranks", "1 process"])
def test_fsdp_killed_and_resumed_matches_uninterrupted(resumed_on: str, fsdp_run: Path,
                                                       tmp_path: Path, data_dir: Path,
                                                       cache_dir: Path) -> None:
    """SIGKILL to the launcher and its workers once step-4 is saved; resumed on 2 ranks, or
    on one process with 2 accumulation steps (the same 8 examples per step)."""
    run_dir = tmp_path / "run"
    args = [*TINY_LLAMA, "parallel=fsdp", *TWO, f"data.dir={data_dir}",
            f"data.cache_dir={cache_dir}", f"run_dir={run_dir}"]
    proc = start(*args)
    wait_for(lambda: (run_dir / "checkpoints" / "step-4").is_dir(), proc, "step-4")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    other = ["parallel.nproc_per_node=1", "trainer.grad_accum=2"] if resumed_on == "1 process" else []
    result = run_cli("train", f"resume={run_dir}", *other)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr
    assert final_metrics(run_dir) == pytest.approx(final_metrics(fsdp_run), rel=FSDP_RTOL)
    for split in ("train", "validation"):
        assert logged(run_dir, split, "loss") == pytest.approx(logged(fsdp_run, split, "loss"),
                                                               rel=FSDP_RTOL)


LONG_DDP = [*TINY, "parallel=ddp", *TWO, "data.max_train_samples=64", "data.max_eval_samples=16",
            "trainer.batch_size=4", "trainer.max_steps=600", "trainer.eval_steps=1000",
            "trainer.save_steps=100", "trainer.log_steps=5", "trainer.eval_test=false"]


def test_a_killed_rank_ends_the_job_with_a_message_naming_it(tmp_path: Path, data_dir: Path,
                                                             cache_dir: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start(*LONG_DDP, f"data.dir={data_dir}", f"data.cache_dir={cache_dir}",
                 f"run_dir={run_dir}")
    wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len(workers(proc.pid)) == 2,
             proc, "training")
    os.kill(workers(proc.pid)[1], signal.SIGKILL)
    killed = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - killed < 60
    assert proc.returncode == 1, stderr[-3000:]
    assert f"rank 1 was killed by SIGKILL; the launcher stopped the other ranks; resume with: " \
           f"sft train resume={run_dir}" in stderr
    assert "Traceback" not in stderr
    assert workers(proc.pid) == []


def test_sigterm_to_the_launcher_saves_exits_143_and_resumes(tmp_path: Path, data_dir: Path,
                                                             cache_dir: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start(*LONG_DDP, f"data.dir={data_dir}", f"data.cache_dir={cache_dir}",
                 f"run_dir={run_dir}")
    wait_for(lambda: (run_dir / "metrics.jsonl").is_file(), proc, "training")
    proc.send_signal(signal.SIGTERM)  # the launcher only; it signals its workers
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "SIGTERM: stopped after step" in stderr and "Traceback" not in stderr
    saved = sorted(os.listdir(run_dir / "checkpoints"))
    assert len(saved) == 1 and saved[0] != "step-600", saved
    result = run_cli("train", f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 600


def test_gradient_checkpointing_trains_the_same(tmp_path: Path, data_dir: Path,
                                                cache_dir: Path) -> None:
    """Recomputing activations changes memory, not the math (tiny-llama has no dropout)."""
    from sft.config.compose import compose_run
    from sft.run.model import build_model
    from sft.run.runner import prepare

    args = [*TINY_LLAMA, "trainer.max_steps=3", f"data.dir={data_dir}",
            f"data.cache_dir={cache_dir}"]
    plain = train_tiny(tmp_path / "plain", data_dir, cache_dir, *args)
    recomputed = train_tiny(tmp_path / "gc", data_dir, cache_dir, *args,
                            "model.gradient_checkpointing=true")
    for split in ("train", "validation"):
        assert logged(recomputed, split, "loss") == pytest.approx(logged(plain, split, "loss"),
                                                                  rel=1e-5)
    run = compose_run([*args, "model.gradient_checkpointing=true"])
    assert build_model(run, prepare(run, ()).task).is_activation_checkpointing


def test_launcher_worlds_from_the_environment() -> None:
    assert from_environment({}) is None
    assert from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(3, 1, 4)
    srun = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}
    assert from_environment({**srun, "MASTER_ADDR": "node1"}) == World(5, 1, 8)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        from_environment(srun)
    assert from_environment({**srun, "SLURM_NTASKS": "1"}) is None  # a submitit sweep job
    assert ParallelConfig().strategy == "none"


def test_several_processes_need_a_strategy(tmp_path: Path) -> None:
    from sft.cli import main

    assert main(["train", *TINY, "parallel.nproc_per_node=2", f"run_dir={tmp_path}/r"]) == 2
