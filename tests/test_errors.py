"""Each user error: one line naming the problem, exit status 2, no traceback, no debris."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY, run_cli


def write_sst2(root: Path, train: str, dev: str = "sentence\tlabel\ngood\t1\nbad\t0\n") -> Path:
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "train.tsv").write_text(train)
    (root / "sst2" / "dev.tsv").write_text(dev)
    return root


CASES = {
    "unknown_option": (["task=nope"], "Could not find 'task/nope'"),
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_exit_2(case: str, tmp_path: Path) -> None:
    dirs = {
        "bad_column": write_sst2(tmp_path / "c", "text\tlabel\nfoo\t1\n"),
        "bad_label": write_sst2(tmp_path / "l", "sentence\tlabel\nfoo\t1\nbar\t5\n"),
        "empty": write_sst2(tmp_path / "e", "sentence\tlabel\n"),
    }
    overrides, expected = CASES[case]
    run_dir = tmp_path / "run"
    if overrides is None:
        args = ["fly"]
    else:
        args = ["train", *TINY, f"run_dir={run_dir}", f"data.cache_dir={tmp_path / 'cache'}",
                *[o.format(**dirs) for o in overrides]]
    result = run_cli(*args, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0] and "Traceback" not in result.stderr
    assert not run_dir.exists()  # nothing half-made left behind


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = run_cli("train", *TINY, "data.dir=/nonexistent", f"run_dir={tmp_path / 'r'}",
                     env={"SFT_DEBUG": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr
