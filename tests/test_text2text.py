"""Summarization (DialogSum) and translation (Multi30k) end to end on both model kinds:
tiny-t5 (a random T5 with MiniLM's real tokenizer) and tiny-llama (a random Llama with
SmolLM2's real tokenizer and chat template), on the real data files: what a run writes, resume,
generation length settings, prediction, and the errors a user can make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import kill_at_checkpoint, read_jsonl, results
from safetensors.torch import load_file

from sft.cli import main
from sft.config.compose import compose_run
from sft.config.tasks import GenerationConfig
from sft.run.runner import load_finished, prepare
from sft.tasks.base import IGNORE_INDEX
from tests.test_errors import assert_one_line, in_process  # noqa: F401 (a fixture)

COMMON = ["hardware=cpu", "trainer.progress=false", "data.max_length=128",
          "data.max_eval_samples=6", "optimizer.lr=1e-3", "task.max_target_length=32",
          "task.generation.max_new_tokens=6", "task.generation.num_beams=2"]


def args(data_dir: Path, cache_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*COMMON, f"data.dir={data_dir}", f"data.cache_dir={cache_dir}", f"run_dir={run_dir}",
            *extra]


def train(*argv: str) -> None:
    assert main(["train", *argv]) == 0


# -- one summarization run on tiny-t5, shared by the run-dir, predict and resume tests -----
SHORT = ["task=summarization", "model=tiny-t5", "data.max_train_samples=32", "trainer.batch_size=4",
         "trainer.max_steps=6", "trainer.eval_steps=3", "trainer.save_steps=2",
         "trainer.log_steps=2"]


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("t5") / "run"
    train(*args(data_dir, cache_dir, run_dir, *SHORT))
    return run_dir


def test_summarization_run_dir_scores_generations_with_rouge(t5_run: Path) -> None:
    evaluations = [r for r in read_jsonl(t5_run / "metrics.jsonl") if r["split"] == "validation"]
    assert [r["step"] for r in evaluations] == [0, 3, 6]  # step 0: the zero-shot baseline
    assert evaluations[-1]["loss"] < evaluations[0]["loss"]
    metrics = json.loads((t5_run / "metrics.json").read_text())
    for split in ("validation", "test"):
        for key in ("rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len", "max_new_tokens_hit"):
            assert 0 <= metrics[f"{split}/{key}"] <= 100
        assert metrics[f"{split}/gen_len"] <= 6
    assert metrics["best/metric"] == "validation/rougeL"
    predictions = read_jsonl(t5_run / "predictions-validation.jsonl")
    assert len(predictions) == 6
    assert all(p["source"].startswith("#Person1#") and len(p["references"]) == 1
               and isinstance(p["prediction"], str) and p["new_tokens"] <= 6 for p in predictions)
    # DialogSum's test split has three reference summaries per dialogue: all are scored
    assert all(len(p["references"]) == 3 for p in read_jsonl(t5_run / "predictions-test.jsonl"))
    preview = (t5_run / "preview.txt").read_text()
    assert preview.startswith("[CLS] summarize :")  # T5 family: the task prefix
    assert "=> [[[CLS]" not in preview and "[SEP]]]" in preview  # [CLS] is fed, not predicted
    generation = json.loads((t5_run / "best" / "generation_config.json").read_text())
    assert generation["max_new_tokens"] == 6 and generation["num_beams"] == 2  # as sft decodes
    assert "Warnings" in (t5_run / "README.md").read_text()  # a random model never stops


def test_killed_and_resumed_run_equals_uninterrupted(t5_run: Path, data_dir: Path,
                                                     cache_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    argv = args(data_dir, cache_dir, run_dir, *SHORT)
    kill_at_checkpoint(argv, run_dir, 4)
    train(f"resume={run_dir}")
    assert results(run_dir) == results(t5_run)
    for name in ("predictions-validation.jsonl", "predictions-test.jsonl"):
        assert read_jsonl(run_dir / name) == read_jsonl(t5_run / name)
    a, b = (load_file(str(d / "best" / "model.safetensors")) for d in (run_dir, t5_run))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generation_length_settings_are_honoured(t5_run: Path) -> None:
    _, prepared, model = load_finished(t5_run)
    records = [{"dialogue": "#Person1#: Hi.\n#Person2#: Hello, how are you today?"},
               {"prompt": "#Person1#: Where is the station?"}]
    for low, high in ((0, 5), (3, 3), (5, 5)):
        gen = GenerationConfig(max_new_tokens=high, min_new_tokens=low, num_beams=2)
        out = prepared.task.predict(model, records, 2, gen)
        assert all(low <= r["new_tokens"] <= high for r in out), out


def test_predict_and_generate_write_generations(t5_run: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"dialogue": "#Person1#: Hi.\n#Person2#: Hello."}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(t5_run), "--input", str(records), "--output", str(out)]) == 0
    written = read_jsonl(out)
    assert written[0]["dialogue"].startswith("#Person1#") and written[0]["new_tokens"] <= 6
    capsys.readouterr()
    assert main(["generate", str(t5_run), "--prompt", "#Person1#: Hi.", "--max-new-tokens",
                 "3"]) == 0
    assert capsys.readouterr().out.strip()  # the random model's three tokens


def test_encoder_decoder_batches_feed_the_shifted_target(data_dir: Path, cache_dir: Path,
                                                         tmp_path: Path) -> None:
    run = compose_run(args(data_dir, cache_dir, tmp_path / "r", *SHORT))
    prepared = prepare(run, ("validation",))
    columns = prepared.features["validation"][:3]
    batch = prepared.task.collate(columns, None)
    labels, fed = batch["labels"], batch["decoder_input_ids"]
    assert (fed[:, 0] == 0).all()  # tiny-t5's decoder_start_token_id
    assert torch.equal(fed[:, 1:], labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE_INDEX, 0))
    assert (labels == IGNORE_INDEX).any()  # uneven targets are padded with -100
    assert all(row[-1] == 102 for row in columns["labels"])  # each target ends in [SEP]
    # evaluation runs the encoder once for the loss and generation: same as running it twice
    lm, gen = prepared.task.lm, GenerationConfig(max_new_tokens=5, num_beams=2)
    torch.manual_seed(0)
    model = prepared.task.build_model(run.model).eval()
    with torch.inference_mode():
        loss, generated = lm.evaluate_batch(model, batch, gen)
        assert torch.allclose(loss, lm.loss(model, batch), rtol=1e-5)
    rows = [ids[:n].tolist() for ids, n in zip(batch["input_ids"],
                                                batch["attention_mask"].sum(1), strict=True)]
    assert generated == lm.generate(model, rows, gen, batch_size=3)


# -- each task on each model kind -------------------------------------------------------
@pytest.mark.parametrize("task,model,extra", [
    ("translation", "tiny-llama", ["trainer.batching=packed"]),
    ("translation", "tiny-t5", ["task.source_lang=de", "task.target_lang=en"]),
    ("summarization", "tiny-llama", []),
])
def test_each_task_trains_on_each_model_kind(task: str, model: str, extra: list[str],
                                             data_dir: Path, cache_dir: Path,
                                             tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train(*args(data_dir, cache_dir, run_dir, f"task={task}", f"model={model}",
                "data.max_train_samples=16", "trainer.batch_size=4", "trainer.max_steps=2",
                "trainer.eval_test=false", *extra))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    scores = ("bleu", "chrf") if task == "translation" else ("rouge1", "rougeLsum")
    assert all(f"validation/{key}" in metrics for key in scores)
    predictions = read_jsonl(run_dir / "predictions-validation.jsonl")
    assert len(predictions) == 6 and all(p["new_tokens"] <= 6 for p in predictions)
    preview = (run_dir / "preview.txt").read_text()
    if task == "translation":
        assert metrics["signature/bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
        assert "chrf" in metrics["signature/chrf"] or "nc:6" in metrics["signature/chrf"]
        source_lang = "de" if "task.source_lang=de" in extra else "en"
        pairs = read_jsonl(data_dir / "multi30k_en_de/val.jsonl")
        sources = {p["translation"][source_lang] for p in pairs}
        assert all(p["source"] in sources for p in predictions)
    if model == "tiny-llama":  # the source inside the prompt, the loss on the target only
        assert "<|im_start|>assistant\n[[" in preview and "<|im_end|>]]" in preview


# -- bad input: one line, exit 2 ---------------------------------------------------------
ERRORS = {
    "missing_source": (["task=summarization", "model=tiny-t5", "task.source_column=text"],
                       "source column 'text'"),
    "missing_target": (["task=summarization", "model=tiny-t5", "task.target_column=abstract",
                        "task.reference_columns=[]"], "target column 'abstract'"),
    "missing_language": (["task=translation", "model=tiny-t5", "task.target_lang=fr"],
                         "task.target_lang='fr'"),
    "num_beams_0": (["task=summarization", "model=tiny-t5", "task.generation.num_beams=0"],
                    "num_beams must be >= 1"),
    "max_new_tokens_0": (["task=translation", "model=tiny-t5",
                          "task.generation.max_new_tokens=0"], "max_new_tokens must be >= 1"),
    "no_prompt": (["task=summarization", "model=tiny-llama", "task.prompt=null"], "task.prompt"),
    "encoder_only": (["task=summarization", "model=minilm"], "bert2bert-minilm"),
    "packed_encoder_decoder": (["task=translation", "model=tiny-t5", "trainer.batching=packed"],
                               "trainer.batching=packed"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_text2text_user_errors_are_one_line_exit_2(case: str, tmp_path: Path, data_dir: Path,
                                                   in_process: None,  # noqa: F811
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    extra, expected = ERRORS[case]
    code = main(["train", *args(data_dir, tmp_path / "cache", tmp_path / "run", *extra)])
    out, err = capfd.readouterr()
    assert_one_line(code, out, err, expected, tmp_path / "run")


def test_the_model_kind_and_prefix_are_part_of_the_feature_cache_key(data_dir: Path,
                                                                       cache_dir: Path,
                                                                       tmp_path: Path) -> None:
    """tiny-t5 and bert2bert-minilm share MiniLM's tokenizer and the task config, but only the
    T5 gets "summarize: ": a cache keyed on those alone would hand one the other's features."""
    def features(model: str):
        run = compose_run(args(data_dir, cache_dir, tmp_path / "r", "task=summarization",
                               f"model={model}", "data.max_train_samples=4"))
        return prepare(run, ("validation",)).features["validation"]

    t5, bert2bert = features("tiny-t5"), features("bert2bert-minilm")
    assert t5.cache_files[0]["filename"] != bert2bert.cache_files[0]["filename"]
    assert t5["input_ids"][0][1:4] != bert2bert["input_ids"][0][1:4]  # "summarize :" vs text
