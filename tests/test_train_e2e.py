"""A short real run through the CLI writes a complete run dir; eval and predict use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import pipeline

from sft.cli import main
from tests.conftest import read_jsonl, train_tiny


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path,
                 cache_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "sentiment"
    return train_tiny(run_dir, data_dir, cache_dir, "data.max_train_samples=256",
                      "data.max_eval_samples=64", "trainer.max_steps=12", "trainer.eval_steps=6",
                      "trainer.log_steps=3", "trainer.batch_size=16", "optimizer.lr=1e-3")


def test_run_dir_has_every_file(finished_run: Path) -> None:
    for name in [".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
                 "config.yaml", "env.json", "metrics.jsonl", "metrics.json", "train.log",
                 "README.md", "best/config.json", "best/model.safetensors",
                 "best/tokenizer.json", "checkpoints/step-12/trainer_state.pt",
                 "checkpoints/step-12/model.safetensors"]:
        assert (finished_run / name).is_file(), name


def test_metrics_files(finished_run: Path) -> None:
    final = json.loads((finished_run / "metrics.json").read_text())
    for key in ["validation/accuracy", "validation/f1_macro", "validation/loss", "train/loss",
                "best/step"]:
        assert key in final, key
    assert 0.0 <= final["validation/accuracy"] <= 1.0
    events = read_jsonl(finished_run / "metrics.jsonl")
    train_steps = [e["step"] for e in events if e["split"] == "train"]
    eval_steps = [e["step"] for e in events if e["split"] == "validation"]
    assert train_steps == [3, 6, 9, 12] and eval_steps == [6, 12]
    assert final["best/step"] in eval_steps
    best_eval = next(e for e in events if e["split"] == "validation" and e["step"] == final["best/step"])
    assert best_eval["accuracy"] == final["validation/accuracy"]


def test_saved_config_and_env(finished_run: Path) -> None:
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert config["task"]["name"] == "sentiment" and config["trainer"]["max_steps"] == 12
    assert config["run_dir"] == str(finished_run)
    env = json.loads((finished_run / "env.json").read_text())
    assert env["seed"] == 42 and "torch" in env["versions"]
    assert set(env["data_files"]) == {"train", "validation"}


def test_pipeline_loads_best_with_label_names(finished_run: Path) -> None:
    classify = pipeline("text-classification", model=str(finished_run / "best"))
    labels = {p["label"] for p in classify(["a fine film", "a dull film"])}
    assert labels <= {"negative", "positive"}


def test_eval_reproduces_best_validation_metrics(finished_run: Path, capsys) -> None:
    assert main(["eval", str(finished_run)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    final = json.loads((finished_run / "metrics.json").read_text())
    assert printed["validation/accuracy"] == pytest.approx(final["validation/accuracy"])
    assert printed["validation/loss"] == pytest.approx(final["validation/loss"], rel=1e-4)


def test_predict_writes_labels_and_scores(finished_run: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"sentence": "a triumph"}\n{"sentence": "a mess", "id": 7}\n')
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(finished_run), "--input", str(source), "--output", str(out)]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 2 and rows[1]["id"] == 7
    for row in rows:
        assert row["label"] in {"negative", "positive"}
        assert sum(row["scores"].values()) == pytest.approx(1.0)
        assert row["score"] == max(row["scores"].values())
