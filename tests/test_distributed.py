"""torchrun with 2 CPU processes (gloo): one run dir, written once, training in lockstep, and
the same training as one process with twice the per-device batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, TINY, read_jsonl, train_tiny

pytestmark = pytest.mark.slow

# Run under torchrun: trains through the real CLI, then saves the weights this rank ends with
# (the module it handed to DDP), so the test can compare ranks; only rank 0 writes the run dir.
RANK_WEIGHTS = """
import os, sys
import torch
from torch.nn.parallel import DistributedDataParallel

wrapped = []
init = DistributedDataParallel.__init__

def capture(self, module, *args, **kwargs):
    init(self, module, *args, **kwargs)
    wrapped.append(module)

DistributedDataParallel.__init__ = capture
from sft.cli import main

out, args = sys.argv[1], sys.argv[2:]  # main() rewrites sys.argv for Hydra
code = main(args)
if code:
    sys.exit(code)
(model,) = wrapped
torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
           os.path.join(out, f"rank-{os.environ['RANK']}.pt"))
sys.exit(code)
"""

STEPS, PER_RANK = 8, 8
# 64 examples: 4 steps an epoch of 2 x 8 (or 1 x 16), so 8 steps cross an epoch boundary.
# Without dropout and length grouping, step s of the 2-rank run sees batches 2s and 2s+1 of
# the epoch's order (8 each) and the 1-process run batch s of 16: the same 16 examples.
COMMON = [*TINY, "data.max_train_samples=64", "data.max_eval_samples=32",
          f"trainer.max_steps={STEPS}", "trainer.eval_steps=4", "trainer.log_steps=2",
          "trainer.group_by_length=false", "optimizer=sgd", "optimizer.lr=0.5",
          "trainer.max_grad_norm=null",
          "+model.config_overrides.hidden_dropout_prob=0",
          "+model.config_overrides.attention_probs_dropout_prob=0"]
# SGD without clipping: a gradient summed instead of averaged over ranks would show (Adam would
# hide it). fp32 on CPU measured 1.2e-7 apart at most (batches of 8 and 16 pad to other lengths
# and reduce in another order) while the last 4 steps move weights by ~0.1.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def torchrun(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """2 gloo processes; the whole process group is killed if the test times out."""
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    """One 2-rank run into the default run dir under its working directory; the folder also
    holds rank-0.pt and rank-1.pt, each rank's final weights."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "rank_weights.py").write_text(RANK_WEIGHTS)
    result = torchrun("rank_weights.py", str(root), "train", *COMMON, f"data.dir={data_dir}",
                      f"data.cache_dir={cache_dir}", f"trainer.batch_size={PER_RANK}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def run_dir_of(ddp_run: Path) -> Path:
    run_dirs = list((ddp_run / "runs" / "sentiment" / "tiny-bert").iterdir())
    assert len(run_dirs) == 1  # both ranks agreed on the timestamped folder
    return run_dirs[0]


def checkpoint_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step}" / "model.safetensors")


def logged(run_dir: Path, split: str, key: str) -> list[float]:
    return [e[key] for e in read_jsonl(run_dir / "metrics.jsonl") if e["split"] == split]


def test_two_process_ddp_run_writes_one_run_dir(ddp_run: Path) -> None:
    run_dir = run_dir_of(ddp_run)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/steps"] == STEPS
    assert metrics["train/samples"] == STEPS * 2 * PER_RANK  # both ranks' examples counted
    events = read_jsonl(run_dir / "metrics.jsonl")
    assert [e["step"] for e in events if e["split"] == "train"] == [2, 4, 6, 8]  # rank 0 only
    assert (run_dir / "train.log").read_text().count("done:") == 1
    assert (run_dir / "best" / "model.safetensors").is_file()


def test_ranks_end_with_identical_weights(ddp_run: Path) -> None:
    rank0, rank1 = (torch.load(ddp_run / f"rank-{r}.pt") for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []
    saved = checkpoint_weights(run_dir_of(ddp_run), STEPS)
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)  # rank 0 saved what it holds


def test_two_ranks_train_like_one_process_with_twice_the_batch(ddp_run: Path, tmp_path: Path,
                                                               data_dir: Path,
                                                               cache_dir: Path) -> None:
    single = train_tiny(tmp_path / "single", data_dir, cache_dir, *COMMON,
                        f"trainer.batch_size={2 * PER_RANK}")
    ddp = run_dir_of(ddp_run)
    for split, key in [("train", "loss"), ("train", "lr"), ("validation", "loss")]:
        assert logged(ddp, split, key) == pytest.approx(logged(single, split, key), rel=LOSS_RTOL)
    one, two = checkpoint_weights(single, STEPS), checkpoint_weights(ddp, STEPS)
    halfway = checkpoint_weights(ddp, STEPS // 2)
    gap = max(float((one[k] - two[k]).abs().max()) for k in one)
    moved = max(float((two[k] - halfway[k]).abs().max()) for k in two)
    assert gap <= WEIGHT_ATOL, f"1 process vs 2 ranks: max weight difference {gap:.2e}"
    assert moved > 100 * WEIGHT_ATOL  # the tolerance is far below what training changes


def test_generation_evaluation_is_sharded_and_merged_across_ranks(tmp_path: Path,
                                                                  data_dir: Path,
                                                                  cache_dir: Path) -> None:
    """Each rank generates for half the validation split; the merged scores and the joined
    predictions file equal one process's (the model as loaded: eval_first, no step taken)."""
    common = ["task=summarization", "model=tiny-t5", "hardware=cpu", "trainer.progress=false",
              f"data.dir={data_dir}", f"data.cache_dir={cache_dir}", "data.max_train_samples=8",
              "trainer.batch_size=2",
              "data.max_eval_samples=10", "data.max_length=64", "trainer.max_steps=1",
              "trainer.eval_steps=1000", "trainer.eval_test=false", "optimizer.lr=1e-12",
              "task.generation.max_new_tokens=4", "task.generation.num_beams=1"]
    result = torchrun("-m", "sft.cli", "train", *common, f"run_dir={tmp_path / 'ddp'}",
                      cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    from sft.cli import main

    assert main(["train", *common, f"run_dir={tmp_path / 'one'}"]) == 0
    first = [[e for e in read_jsonl(tmp_path / run / "metrics.jsonl")
              if e["split"] == "validation"][0] for run in ("ddp", "one")]
    for key in ("rouge1", "rougeLsum", "gen_len", "loss"):
        assert first[0][key] == pytest.approx(first[1][key], rel=1e-5), key
    rows = [sorted(json.dumps(r, sort_keys=True) for r in
                   read_jsonl(tmp_path / run / "predictions-validation.jsonl"))
            for run in ("ddp", "one")]
    assert len(rows[0]) == 10 and rows[0] == rows[1]
    assert not list((tmp_path / "ddp").glob(".predictions-*"))  # the ranks' parts are joined
