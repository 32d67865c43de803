"""Each user error: one line naming the problem, exit status 2, no traceback, no debris.

The cases run in-process through `sft.cli.main` (a subprocess each would pay seconds of
imports); one case goes through the real `python -m sft.cli` entry point."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from sft.cli import main
from tests.conftest import TINY, run_cli


def write_sst2(root: Path, train: str, dev: str = "sentence\tlabel\ngood\t1\nbad\t0\n") -> Path:
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "train.tsv").write_text(train)
    (root / "sst2" / "dev.tsv").write_text(dev)
    return root


CASES = {
    "unknown_option": (["task=nope"], "unknown task option 'nope'"),
    "unknown_key": (["trainer.nope=1"], "trainer.nope"),
    "appended_unknown_key": (["+trainer.nope=1"], "trainer.nope"),
    "mistyped_value": (["trainer.epochs=abc"], "trainer.epochs"),
    "missing_data_file": (["data.dir=/nonexistent"], "data file not found"),
    "missing_column": (["data.dir={bad_column}"], "column 'sentence' not found"),
    "label_outside_set": (["data.dir={bad_label}"], "label 5"),
    "empty_split": (["data.dir={empty}"], "empty"),
    "hub_model_offline": (["model.name_or_path=bert-base-uncased"], "not in the local Hugging Face cache"),
    "unknown_command": (None, "unknown command"),
}


def cli_args(case: str, tmp_path: Path) -> list[str]:
    overrides, _ = CASES[case]
    if overrides is None:
        return ["fly"]
    dirs = {
        "bad_column": write_sst2(tmp_path / "c", "text\tlabel\nfoo\t1\n"),
        "bad_label": write_sst2(tmp_path / "l", "sentence\tlabel\nfoo\t1\nbar\t5\n"),
        "empty": write_sst2(tmp_path / "e", "sentence\tlabel\n"),
    }
    return ["train", *TINY, f"run_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}",
            *[o.format(**dirs) for o in overrides]]


def assert_one_line(code: int, stdout: str, stderr: str, expected: str, run_dir: Path) -> None:
    assert code == 2, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert expected in lines[0]
    assert "Traceback" not in stdout + stderr and "Logging error" not in stdout + stderr
    assert not run_dir.exists()  # nothing half-made left behind


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What `sft.cli.main` changes in the process (argv, env, logging, Hydra) is put back."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.delenv("SFT_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:], root.level = handlers, level
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_exit_2(case: str, tmp_path: Path, in_process: None,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    code = main(cli_args(case, tmp_path))
    out, err = capfd.readouterr()  # file descriptors: rich, logging and C-level writes alike
    assert_one_line(code, out, err, CASES[case][1], tmp_path / "run")


def test_the_real_entry_point_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli(*cli_args("missing_data_file", tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert_one_line(result.returncode, result.stdout, result.stderr, CASES["missing_data_file"][1],
                    tmp_path / "run")


def test_debug_raises_instead_of_one_line(tmp_path: Path, in_process: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SFT_DEBUG=1: the exception leaves main(), so the entry point prints its traceback."""
    monkeypatch.setenv("SFT_DEBUG", "1")
    with pytest.raises(Exception, match="data file not found"):
        main(["train", *TINY, "data.dir=/nonexistent", f"run_dir={tmp_path / 'r'}"])
