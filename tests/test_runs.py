"""What a run leaves for later: curves.png (also when it fails or is stopped), status.json read
back by `sft runs` (complete / failed / interrupted, a SIGKILLed run included), `sft report
RUN_DIR` redrawing curves, and a model card the Hugging Face Hub parses."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml
from conftest import TINY, kill_at_checkpoint, short_args
from test_resume import signal_when, start

from sft.cli import main
from sft.config.compose import compose_run
from sft.run.card import card_text

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} missing"
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000, f"{path} is not a drawn PNG"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    """Under one folder, oldest first: a complete sentiment run, a topic run that diverges
    (lr 1e30: the loss is finite at step 1, logged, and nan at step 2), and a sentiment run
    SIGKILLed at its first checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *short_args(data_dir, cache_dir), f"run_dir={root / 'complete'}"]) == 0
    code = main(["train", *TINY, "task=topic", f"data.dir={data_dir}", f"data.cache_dir={cache_dir}",
                 "data.max_train_samples=64", "data.max_eval_samples=16", "trainer.batch_size=8",
                 "trainer.log_steps=1", "trainer.max_steps=4", "optimizer.lr=1e30",
                 f"run_dir={root / 'failed'}"])
    assert code == 2
    killed = root / "killed"
    kill_at_checkpoint([*short_args(data_dir, cache_dir), f"run_dir={killed}"], killed, 3)
    return root


def runs_json(capsys: pytest.CaptureFixture, *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["runs", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_curves_are_drawn_when_a_run_completes_or_fails(runs: Path) -> None:
    assert_png(runs / "complete" / "curves.png")
    assert_png(runs / "failed" / "curves.png")  # the diverged run shows where it went wrong
    assert not (runs / "killed" / "curves.png").exists()  # SIGKILL: nothing ran at the end


def test_sigterm_stops_a_run_as_interrupted_with_its_curves(data_dir: Path, cache_dir: Path,
                                                            tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "stopped"
    proc = start([*short_args(data_dir, cache_dir), f"run_dir={run_dir}"])
    signal_when(proc, run_dir / "checkpoints", lambda names: "step-3" in names, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert_png(run_dir / "curves.png")
    recorded = json.loads((run_dir / "status.json").read_text())
    assert recorded["status"] == "interrupted"  # written by the run itself as it stopped
    [row] = runs_json(capsys, str(tmp_path))
    assert row["status"] == "interrupted" and row["steps"] >= 3


def test_report_on_one_run_dir_redraws_its_curves(runs: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    curves = runs / "complete" / "curves.png"
    curves.unlink()
    assert main(["report", str(runs / "complete")]) == 0
    assert_png(curves)
    assert not (runs / "complete" / "summary.json").exists()  # a run, not a sweep
    assert "complete" in capsys.readouterr().out


def test_runs_lists_statuses_newest_first(runs: Path, capsys: pytest.CaptureFixture) -> None:
    rows = runs_json(capsys, str(runs))
    assert [(r["run_dir"], r["status"]) for r in rows] == [
        ("killed", "interrupted"), ("failed", "failed"), ("complete", "complete")]
    complete = rows[2]
    assert complete["task"] == "sentiment" and complete["model"] == "tiny-bert"
    assert complete["metric"] == "validation/accuracy" and 0 <= complete["value"] <= 1
    assert complete["steps"] == 12 and complete["seconds"] > 0
    assert complete["overrides"]["optimizer.lr"] == "1e-3"
    assert "run_dir" not in complete["overrides"]  # where it went, not how it differs
    assert rows[0]["steps"] >= 3 and rows[0]["value"] is None  # killed: no best metric yet
    assert rows[1]["value"] is None and rows[1]["task"] == "topic"


def test_runs_filters_by_task_and_sorts_by_a_metric(runs: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert [r["run_dir"] for r in runs_json(capsys, str(runs), "--task", "topic")] == ["failed"]
    assert {r["run_dir"] for r in runs_json(capsys, str(runs), "--task", "sentiment")} == {
        "complete", "killed"}
    # by a metric: the runs that have it first (best first), the others after, newest first
    rows = runs_json(capsys, str(runs), "--sort", "accuracy")
    assert [r["run_dir"] for r in rows] == ["complete", "killed", "failed"]
    assert main(["runs", str(runs), "--sort", "no_such_metric"]) == 2
    assert "validation/accuracy" in capsys.readouterr().err


def test_runs_table_and_a_missing_folder(runs: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["runs", str(runs)]) == 0
    out = capsys.readouterr().out
    for word in ("interrupted", "failed", "complete", "tiny-bert", "accuracy"):
        assert word in out
    assert main(["runs", str(runs / "nowhere")]) == 2
    assert "sft runs DIR" in capsys.readouterr().err


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_best_model_card_parses_for_the_hub(runs: Path) -> None:
    from huggingface_hub import ModelCard

    path = runs / "complete" / "best" / "README.md"
    card = ModelCard.load(path)
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.datasets == ["nyu-mll/glue"] and "sft" in card.data.tags
    assert card.data.library_name == "transformers" and "accuracy" in card.data.metrics
    assert card.data.base_model is None  # tiny-bert is random weights: no base to credit
    assert "random weights" in card.text and "| validation/accuracy |" in card.text
    assert path.read_text() == (runs / "complete" / "README.md").read_text()  # one writer


@pytest.mark.parametrize("overrides, encoder_decoder, expected", [
    (["task=sentiment", "model=minilm"], False,
     {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "pipeline_tag": "text-classification"}),
    (["task=ner", "model=bert-base"], False,
     {"base_model": "bert-base-uncased", "pipeline_tag": "token-classification"}),
    (["task=summarization", "model=t5-small"], True,
     {"base_model": "google-t5/t5-small", "pipeline_tag": "summarization",
      "license": "cc-by-nc-sa-4.0", "datasets": ["knkarthick/dialogsum"]}),
    (["task=instruction", "model=smollm2"], False,
     {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "pipeline_tag": "text-generation",
      "license": "cc-by-nc-4.0"}),
])
def test_card_names_the_base_model_and_pipeline(overrides: list[str], encoder_decoder: bool,
                                                expected: dict, tmp_path: Path) -> None:
    best = tmp_path / "best"
    best.mkdir()
    (best / "config.json").write_text(json.dumps({"is_encoder_decoder": encoder_decoder}))
    run = compose_run(overrides)
    meta = front_matter(card_text(run, {"validation/loss": 1.0}, "sft train", tmp_path, best))
    assert {k: meta.get(k) for k in expected} == expected
