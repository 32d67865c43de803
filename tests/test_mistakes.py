"""A new user's mistakes, each answered in one line (exit 2) that says what is wrong and the
fix: typos get the nearest names, a run dir that is a file, data that is not UTF-8 text;
and what used to surprise: max_steps=0 (now: evaluate the model as loaded and stop),
`text` records for predict, and the help and shell completion a user looks for first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft.cli import main
from sft.config.compose import compose, compose_run, explain
from sft.errors import ConfigError
from tests.conftest import TINY, read_jsonl, run_cli, train_tiny
from tests.test_errors import assert_one_line, in_process  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("in_process")


def train_args(tmp_path: Path, *overrides: str) -> list[str]:
    return ["train", *TINY, f"run_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}",
            *overrides]


def one_line(capfd: pytest.CaptureFixture[str], code: int, run_dir: Path) -> str:
    out, err = capfd.readouterr()
    assert_one_line(code, out, err, "error:", run_dir)
    return err.strip()


# -- typos -----------------------------------------------------------------------------
@pytest.mark.parametrize("override,expected", [
    ("trainer.bach_size=8", "unknown key 'trainer.bach_size'; did you mean trainer.batch_size?"),
    ("+trainer.bach_size=8", "unknown key 'trainer.bach_size'; did you mean trainer.batch_size?"),
    ("lr=1e-4", "unknown key 'lr'; did you mean optimizer.lr?"),  # the section left out
    ("modle=minilm", "unknown key 'modle'; did you mean model?"),  # a group's name
    ("experimnt=sst2-tiny-smoke", "unknown key 'experimnt'; did you mean experiment?"),
    ("model=minlm", "unknown model option 'minlm'; did you mean minilm?"),
    # an optional group: Hydra itself would skip the missing option without a word
    ("experiment=sst2-tiny-smok", "unknown experiment option 'sst2-tiny-smok'; did you mean "
                                  "sst2-tiny-smoke?"),
    ("model=tiny-bert,minlm", "unknown model option 'minlm'; did you mean minilm?"),  # in a sweep too
])
def test_a_typo_names_the_nearest_key_or_option(override: str, expected: str, tmp_path: Path,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    multirun = ["--multirun"] if "," in override else []
    line = one_line(capfd, main([*train_args(tmp_path, override), *multirun]), tmp_path / "run")
    assert line == f"error: {expected}"
    assert "+" not in line.replace(override, "")  # no advice to append the typo with `+`


def test_composing_errors_of_other_verbs_get_the_same_hints() -> None:
    """`sft eval RUN_DIR model=...` composes without the train-time check."""
    with pytest.raises(Exception) as caught:
        compose(["hardware=gpuu"])
    assert explain(caught.value) == "unknown hardware option 'gpuu'; did you mean gpu?"
    with pytest.raises(Exception) as caught:
        compose(["optimizer.lrr=1e-3"])  # a free dict: a new argument is added with `+`
    assert explain(caught.value) == ("unknown key 'optimizer.lrr'; did you mean optimizer.lr? "
                                     "(a new optimizer argument is added with +optimizer.lrr=...)")


def test_unknown_command_suggests_the_nearest(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["trian"]) == 2
    assert "unknown command 'trian'; did you mean train?" in capfd.readouterr().err


# -- run_dir that is a file ---------------------------------------------------------------
def test_run_dir_naming_a_file_is_one_line_and_keeps_the_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for run_dir in (notes, notes / "run"):
        result = run_cli("train", *TINY, f"run_dir={run_dir}")
        assert_one_line(result.returncode, result.stdout, result.stderr,
                        f"{notes} is a file, not a folder", tmp_path / "absent")
        assert notes.read_text() == "keep me"


# -- data that is not UTF-8 text ----------------------------------------------------------
@pytest.mark.parametrize("content,expected", [
    (b"sentence\tlabel\ngood\t1\ncaf\xe9 noir\t0\n",
     "is not UTF-8 at byte offset 25 (line 3: byte 0xe9); save it as UTF-8"),
    (b"\x7fELF\x02\x01\x01\x00\x00sentence\tlabel\n" * 20,
     "is not a TSV file: it holds binary data (a NUL byte at byte 7)"),
])
def test_undecodable_data_file_says_what_is_wrong(content: bytes, expected: str, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    (data / "sst2").mkdir(parents=True)
    (data / "sst2" / "train.tsv").write_bytes(content)
    (data / "sst2" / "dev.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    line = one_line(capfd, main(train_args(tmp_path, f"data.dir={data}")), tmp_path / "run")
    assert f"{data / 'sst2' / 'train.tsv'} {expected}" in line


# -- max_steps=0: the zero-shot baseline ---------------------------------------------------
@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("baseline") / "run"
    return train_tiny(run_dir, data_dir, cache_dir, "trainer.max_steps=0",
                      "data.max_train_samples=64", "data.max_eval_samples=32")


def test_max_steps_zero_evaluates_the_model_as_loaded(baseline: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    events = read_jsonl(baseline / "metrics.jsonl")
    assert [(e["split"], e["step"]) for e in events] == [("validation", 0)]  # no train record
    final = json.loads((baseline / "metrics.json").read_text())
    assert final["train/steps"] == 0 and final["best/step"] == 0
    assert "train/loss" not in final  # no loss to report when nothing trained
    assert final["validation/accuracy"] == events[0]["accuracy"]
    assert not (baseline / "checkpoints").exists()
    # best/ is the model as loaded: evaluating it gives the step-0 record back
    assert main(["eval", str(baseline)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["validation/accuracy"] == pytest.approx(events[0]["accuracy"])


def test_max_steps_minus_one_or_null_trains_for_epochs() -> None:
    for value in ("-1", "null"):
        assert compose_run([f"trainer.max_steps={value}"]).trainer.fixed_steps() is None
    assert compose_run(["trainer.max_steps=0"]).trainer.fixed_steps() == 0
    with pytest.raises(ConfigError, match="trainer.max_steps must be >= 0"):
        compose_run(["trainer.max_steps=-2"])


# -- predict takes `text` -----------------------------------------------------------------
def test_predict_takes_text_as_well_as_the_task_column(baseline: Path, tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('{"text": "a triumph"}\n{"sentence": "a mess", "id": 7}\n')
    assert main(["predict", str(baseline), "--input", str(source), "--output", str(out)]) == 0
    rows = read_jsonl(out)
    assert [r.get("text") for r in rows] == ["a triumph", None]  # records written as given
    assert all(r["label"] in {"negative", "positive"} for r in rows)
    capfd.readouterr()
    source.write_text('{"text": "fine"}\n{"review": "no text here"}\n')
    code = main(["predict", str(baseline), "--input", str(source), "--output", str(out)])
    line = one_line(capfd, code, tmp_path / "absent")
    assert "record 2 has no 'sentence' field (nor 'text')" in line


# -- help and completion ------------------------------------------------------------------
def test_help_lists_verbs_groups_with_options_and_main_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for expected in ("predict RUN_DIR", "model          ", "tiny-bert", "minilm*", "optimizer.lr",
                     "trainer.max_steps", 'eval "$(sft -sc install=bash)"'):
        assert expected in text, expected
    assert main(["train", "task=qa", "--help"]) == 0  # the QA task's own keys
    text = capsys.readouterr().out
    for expected in ("usage: sft train", "sentiment", "max_steps=-1", "n_best=20", "lr=5e-05"):
        assert expected in text, expected


@pytest.mark.parametrize("line,expected", [
    ("sft tr", "train"),
    ("sft train trainer.max", "trainer.max_steps="),
    ("sft train model=tiny", "model=tiny-bert"),
    ("sft cv task=qa task.n_", "task.n_best="),
])
def test_shell_completion_answers_verbs_groups_options_and_keys(
        line: str, expected: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COMP_LINE", line)
    assert main(["-sc", "query=bash"]) == 0
    assert expected in capsys.readouterr().out.split()
    assert main(["-sc", "install=bash"]) == 0
    assert "complete -o nospace -o default -F _sft_complete sft" in capsys.readouterr().out
