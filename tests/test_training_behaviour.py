"""Training behaviour the README promises, checked step-exactly on tiny-bert (CPU):
early stopping, gradient accumulation, Ctrl-C, the test split scored with the best model,
and `resume=latest` choosing between two runs."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, read_jsonl, results, train_tiny

from sft.cli import main


# -- helpers ----------------------------------------------------------------------------
def start(args: list[str], data_dir: Path, cache_dir: Path, run_dir: Path | str,
          cwd: Path = REPO) -> subprocess.Popen:
    """`sft train` of tiny-bert in a fresh process (stderr piped, to read its log lines)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [*TINY, f"data.dir={data_dir}", f"data.cache_dir={cache_dir}", f"run_dir={run_dir}", *args]
    return subprocess.Popen([sys.executable, "-m", "sft.cli", "train", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when_saved(proc: subprocess.Popen, run_dir: Path, name: str) -> None:
    """SIGKILL the run as soon as checkpoints/NAME exists; the kill must land mid-run."""
    folder, deadline = run_dir / "checkpoints", time.monotonic() + 120
    while not (folder / name).is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.002)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()  # it was killed before it finished


def resume(run_dir: Path) -> None:
    assert main(["train", f"resume={run_dir}"]) == 0


def killed_and_resumed(args: list[str], data_dir: Path, cache_dir: Path, run_dir: Path,
                       checkpoint: str) -> Path:
    """A run SIGKILLed once `checkpoint` is saved, then resumed to the end."""
    kill_when_saved(start(args, data_dir, cache_dir, run_dir), run_dir, checkpoint)
    resume(run_dir)
    return run_dir


def evaluations(run_dir: Path, split: str = "validation") -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == split]


def final_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def sft_eval(run_dir: Path, capsys: pytest.CaptureFixture, *args: str) -> dict:
    """What `sft eval RUN_DIR ARGS` prints (it evaluates best/)."""
    capsys.readouterr()
    assert main(["eval", str(run_dir), *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def saved_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints (a half-written `.tmp-step-N` does not count)."""
    folder = run_dir / "checkpoints"
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(int(n[5:]) for n in names if re.fullmatch(r"step-\d+", n))


# -- 1. early stopping ------------------------------------------------------------------
# validation accuracy on 64 dev examples: 0.375 at step 2, 0.625 at step 4, then flat, so
# with patience 2 and an evaluation every 2 steps the run must stop at step 4 + 2 * 2 = 8;
# logging every 3 steps leaves a partial window (steps 7-8) open when it stops
PATIENCE, EVAL_STEPS, MAX_STEPS, BATCH_SIZE = 2, 2, 40, 8
EARLY = ["data.max_train_samples=64", "data.max_eval_samples=64", f"trainer.batch_size={BATCH_SIZE}",
         f"trainer.max_steps={MAX_STEPS}", f"trainer.eval_steps={EVAL_STEPS}",
         f"trainer.early_stopping_patience={PATIENCE}", "trainer.log_steps=3", "optimizer.lr=1e-3"]


@pytest.fixture(scope="module")
def early_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    return train_tiny(tmp_path_factory.mktemp("early") / "run", data_dir, cache_dir, *EARLY)


def test_early_stopping_stops_patience_evaluations_after_the_best(early_run: Path,
                                                                   capsys) -> None:
    evals, final = evaluations(early_run), final_metrics(early_run)
    best = max(evals, key=lambda r: r["accuracy"])  # max() keeps the first of equal values
    assert best["step"] > evals[0]["step"]  # the metric improved before it plateaued
    assert final["best/step"] == best["step"]
    assert final["validation/accuracy"] == best["accuracy"]
    assert evals[-1]["step"] == final["best/step"] + PATIENCE * EVAL_STEPS
    assert final["train/steps"] == evals[-1]["step"] < MAX_STEPS
    assert saved_steps(early_run)[-1] == final["train/steps"]
    # best/ holds the best step's weights, not the last step's
    assert evals[-1]["loss"] != best["loss"]
    printed = sft_eval(early_run, capsys)
    assert printed == {k: v for k, v in final.items() if k.startswith("validation/")}


def test_early_stopped_run_counts_every_step_in_its_train_metrics(early_run: Path) -> None:
    final = final_metrics(early_run)
    train = [r for r in read_jsonl(early_run / "metrics.jsonl") if r["split"] == "train"]
    assert train[-1]["step"] == final["train/steps"]
    assert final["train/samples"] == final["train/steps"] * BATCH_SIZE


@pytest.mark.slow
def test_early_stopped_run_killed_and_resumed_stops_at_the_same_step(
        early_run: Path, data_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    # step 6 is one evaluation without improvement: resume must restore that count
    killed = killed_and_resumed(EARLY, data_dir, cache_dir, tmp_path / "run", "step-6")
    assert results(killed) == results(early_run)


# -- 2. gradient accumulation -----------------------------------------------------------
# 36 examples / batch 4 = 9 micro-batches an epoch, 2 per optimizer step
EXAMPLES, BATCH, ACCUM, EPOCHS = 36, 4, 2, 2
BATCHES = math.ceil(EXAMPLES / BATCH)
ACCUMULATED = [f"data.max_train_samples={EXAMPLES}", "data.max_eval_samples=32",
               f"trainer.batch_size={BATCH}", f"trainer.grad_accum={ACCUM}",
               f"trainer.epochs={EPOCHS}", "trainer.save_steps=3", "trainer.log_steps=1",
               "optimizer.lr=1e-3"]


@pytest.fixture(scope="module")
def accum_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    return train_tiny(tmp_path_factory.mktemp("accum") / "run", data_dir, cache_dir,
                      *ACCUMULATED)


def test_grad_accum_takes_the_steps_the_epoch_arithmetic_implies(accum_run: Path) -> None:
    steps_per_epoch = math.ceil(BATCHES / ACCUM)  # 5
    assert final_metrics(accum_run)["train/steps"] == EPOCHS * steps_per_epoch
    train = [r for r in read_jsonl(accum_run / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, EPOCHS * steps_per_epoch + 1))
    # steps never cross an epoch's end, so a step's epoch is its fraction of the epoch's steps
    assert [r["epoch"] for r in train] == [round(r["step"] / steps_per_epoch, 4) for r in train]
    # evaluation defaults to the last step of each epoch
    assert [r["step"] for r in evaluations(accum_run)] == [steps_per_epoch, 2 * steps_per_epoch]


def test_grad_accum_epochs_see_each_example_once_per_epoch(accum_run: Path) -> None:
    train = [r for r in read_jsonl(accum_run / "metrics.jsonl") if r["split"] == "train"]
    assert train[-1]["epoch"] == EPOCHS
    assert final_metrics(accum_run)["train/samples"] == EPOCHS * EXAMPLES


@pytest.mark.slow
def test_grad_accum_run_killed_and_resumed_equals_uninterrupted(
        accum_run: Path, data_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    # step 6 = micro-batch 12: epoch 2, 3 batches in, mid logging/eval cycle
    killed = killed_and_resumed(ACCUMULATED, data_dir, cache_dir, tmp_path / "run", "step-6")
    assert results(killed) == results(accum_run)


# -- 3. Ctrl-C ---------------------------------------------------------------------------
# every step evaluates 800 dev examples, so a step takes long enough (~1 s) for a second signal sent
# right after the first to land inside it; no periodic checkpoints, only the one Ctrl-C saves
SLOW_STEPS = ["data.max_train_samples=64", "data.max_eval_samples=800", "trainer.batch_size=8",
              "trainer.max_steps=200", "trainer.eval_steps=1", "trainer.save_steps=1000",
              "trainer.eval_test=false", "optimizer.lr=1e-3"]


def read_until(proc: subprocess.Popen, text: str) -> str:
    """stderr up to and including the first line that contains `text`."""
    seen = ""
    while True:
        line = proc.stderr.readline()
        assert line, f"the run ended before printing {text!r}: {seen[-2000:]}"
        seen += line
        if text in line:
            return seen


def interrupt(run_dir: Path, data_dir: Path, cache_dir: Path,
              twice: bool) -> tuple[int, str]:
    """Ctrl-C a run once it is training (once, or twice back to back); its status, stderr."""
    proc = start(SLOW_STEPS, data_dir, cache_dir, run_dir)
    seen = read_until(proc, "step 1 validation")
    assert saved_steps(run_dir) == []
    proc.send_signal(signal.SIGINT)
    seen += read_until(proc, "SIGINT received")  # the handler ran
    if twice:
        proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    return proc.returncode, seen + rest


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_saves_and_exits_130(data_dir: Path, cache_dir: Path,
                                                      tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, stderr = interrupt(run_dir, data_dir, cache_dir, twice=False)
    assert code == 130, stderr[-2000:]
    assert f"resume with: sft train resume={run_dir}" in stderr
    stopped = int(re.search(r"stopped after step (\d+)", stderr).group(1))
    assert saved_steps(run_dir) == [stopped]
    assert evaluations(run_dir)[-1]["step"] == stopped  # the step it was in was finished
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_without_saving(data_dir: Path, cache_dir: Path,
                                                    tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, stderr = interrupt(run_dir, data_dir, cache_dir, twice=True)
    assert code not in (0, 130), stderr[-2000:]  # Python's own KeyboardInterrupt exit
    assert "KeyboardInterrupt" in stderr
    assert "resume with:" not in stderr
    assert saved_steps(run_dir) == []  # none existed when the first signal was sent


# -- 4. the test split is scored with the best model ------------------------------------
# AG News: validation accuracy peaks at step 4 of 8, so best/ is not the last model
TOPIC = ["task=topic", "data.max_train_samples=64", "data.max_eval_samples=64",
         "trainer.batch_size=8", "trainer.max_steps=8", "trainer.eval_steps=2", "optimizer.lr=1e-3"]


def test_test_split_is_scored_with_the_best_model(data_dir: Path, cache_dir: Path,
                                                  tmp_path: Path, capsys) -> None:
    run_dir = train_tiny(tmp_path / "run", data_dir, cache_dir, *TOPIC)
    final, evals = final_metrics(run_dir), evaluations(run_dir)
    assert final["best/step"] < final["train/steps"] == evals[-1]["step"]
    best = next(r for r in evals if r["step"] == final["best/step"])
    assert best["loss"] != evals[-1]["loss"]  # the last model differs from best/
    [test] = evaluations(run_dir, "test")
    assert test["step"] == final["best/step"]
    printed = sft_eval(run_dir, capsys, "split=test")
    assert printed == {k: v for k, v in final.items() if k.startswith("test/")}
    assert printed == {f"test/{k}": v for k, v in test.items() if k not in ("split", "step")}


# -- 5. resume=latest --------------------------------------------------------------------
@pytest.mark.slow
def test_resume_latest_continues_the_run_written_to_last(early_run: Path, data_dir: Path,
                                                         cache_dir: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    root = tmp_path / "runs" / "sentiment" / "tiny-bert"
    # names sort the other way round from their age: only the write times tell them apart
    complete, killed = root / "zz-complete", root / "aa-killed"
    shutil.copytree(early_run, complete)  # a finished run of the same task/model, mtimes kept
    before = {p: p.stat().st_mtime_ns for p in complete.rglob("*")}
    proc = start(EARLY, data_dir, cache_dir, killed.relative_to(tmp_path), cwd=tmp_path)
    kill_when_saved(proc, killed, "step-4")
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, f"data.dir={data_dir}", f"data.cache_dir={cache_dir}", *EARLY,
                 "resume=latest"]) == 0
    assert results(killed) == results(early_run)
    assert {p: p.stat().st_mtime_ns for p in complete.rglob("*")} == before  # untouched
    assert sorted(p.name for p in root.iterdir()) == ["aa-killed", "zz-complete"]
