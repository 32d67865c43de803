"""Instruction tuning of causal LMs end to end on tiny-llama (a random Llama with SmolLM2's
real tokenizer and chat template) and the real alpaca samples: what a run writes, the loss
normalization, packing with resume, generation, Chinese, and the errors a user can make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, kill_at_checkpoint, read_jsonl, results
from safetensors.torch import load_file

from sft.cli import main
from sft.config.compose import compose_run
from sft.run.runner import prepare
from tests.test_errors import assert_one_line, in_process  # noqa: F401 (a fixture)

LM = ["task=instruction", "model=tiny-llama", "hardware=cpu", "trainer.progress=false",
      "data.max_length=128", "data.max_eval_samples=8", "optimizer.lr=1e-3"]


def lm_args(data_dir: Path, cache_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*LM, f"data.dir={data_dir}", f"data.cache_dir={cache_dir}", f"run_dir={run_dir}", *extra]


def train(*args: str) -> None:
    assert main(["train", *args]) == 0


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


# -- a short run shared by the run-dir, generate and resume tests ------------------------
SHORT = ["data.max_train_samples=48", "trainer.batch_size=4", "trainer.max_steps=6",
         "trainer.eval_steps=3", "trainer.save_steps=2", "trainer.log_steps=2",
         "trainer.batching=packed", "task.num_samples=2", "task.generation.max_new_tokens=8"]


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("packed") / "run"
    train(*lm_args(data_dir, cache_dir, run_dir, *SHORT))
    return run_dir


def test_run_dir_has_the_baseline_samples_and_the_trained_spans(packed_run: Path) -> None:
    evaluations = [r for r in read_jsonl(packed_run / "metrics.jsonl") if r["split"] == "validation"]
    assert [r["step"] for r in evaluations] == [0, 3, 6]  # step 0: the model as loaded
    assert all(r["perplexity"] == pytest.approx(2.718281828 ** r["loss"], rel=1e-6)
               for r in evaluations)
    assert evaluations[-1]["loss"] < evaluations[0]["loss"]  # lr 1e-3 on a random model
    samples = read_jsonl(packed_run / "samples.jsonl")
    assert [s["step"] for s in samples] == [0, 0, 3, 3, 6, 6]
    validation = {r["instruction"]: r["output"]
                  for r in read_jsonl(REPO.parent / "shared/data/alpaca_sample/validation.jsonl")}
    assert all(validation[s["prompt"].split("\n\n")[0]] == s["reference"] for s in samples)
    preview = (packed_run / "preview.txt").read_text()
    assert "[[" in preview and "<|im_end|>]]" in preview  # the end of turn is trained
    assert "[[<|im_start|>" not in preview  # the assistant cue is not
    best = packed_run / "best"
    assert "{% for message in messages %}" in (best / "chat_template.jinja").read_text()
    generation = json.loads((best / "generation_config.json").read_text())
    assert generation["max_new_tokens"] == 8 and 2 in generation["eos_token_id"]
    metrics = json.loads((packed_run / "metrics.json").read_text())
    assert metrics["best/metric"] == "validation/loss" and metrics["best/greater_is_better"] is False


def test_generate_answers_a_prompt_and_a_file(packed_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()  # (what a random model says is checked on SmolLM2 below)
    assert main(["generate", str(packed_run), "--prompt", "Name a colour.",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"instruction": "Add 2 and 3.", "input": ""}) + "\n"
                       + json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["generate", str(packed_run), "--input", str(records), "--output", str(out),
                 "--max-new-tokens", "5"]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 2 and all(0 < r["new_tokens"] <= 5 for r in rows)
    assert rows[0]["instruction"] == "Add 2 and 3."


def test_packed_run_killed_and_resumed_equals_uninterrupted(packed_run: Path, data_dir: Path,
                                                            cache_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    argv = lm_args(data_dir, cache_dir, run_dir, *SHORT)
    kill_at_checkpoint(argv, run_dir, 4)
    train(f"resume={run_dir}")
    assert results(run_dir)[0] == results(packed_run)[0]
    assert read_jsonl(run_dir / "samples.jsonl") == read_jsonl(packed_run / "samples.jsonl")
    a, b = weights(run_dir / "best"), weights(packed_run / "best")
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- the loss is a mean over the step's targets, however the step is cut -----------------
def test_batch_8_equals_batch_1_with_8_accumulation_steps(data_dir: Path, cache_dir: Path,
                                                         tmp_path: Path) -> None:
    """Records of uneven length: a per-micro-batch mean would weight short records more."""
    common = ["data.max_train_samples=8", "trainer.max_steps=1", "trainer.group_by_length=false",
              "trainer.eval_first=false", "task.num_samples=0", "optimizer=sgd", "optimizer.lr=1.0",
              "optimizer.weight_decay=0"]  # SGD at lr 1: the update is the gradient itself
    runs = {}
    for name, batch, accum in (("whole", 8, 1), ("accumulated", 1, 8)):
        runs[name] = tmp_path / name
        train(*lm_args(data_dir, cache_dir, runs[name], *common, f"trainer.batch_size={batch}",
                       f"trainer.grad_accum={accum}"))
    lengths = prepare(compose_run(lm_args(data_dir, cache_dir, tmp_path / "x", *common)),
                      ("train",)).features["train"]["input_ids"]
    assert len({len(ids) for ids in lengths}) > 4  # uneven, so the test can fail
    a, b = (weights(runs[n] / "checkpoints" / "step-1") for n in ("whole", "accumulated"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


# -- the feature cache follows the chat template -----------------------------------------
def test_changing_the_chat_template_misses_the_feature_cache(data_dir: Path, cache_dir: Path,
                                                             tmp_path: Path) -> None:
    def features(*extra: str):
        run = compose_run(lm_args(data_dir, cache_dir, tmp_path / "r", "data.max_train_samples=4",
                                  *extra))
        return prepare(run, ("train",)).features["train"]

    own, chatml = features(), features("task.chat_template=chatml")
    assert own.cache_files[0]["filename"] != chatml.cache_files[0]["filename"]
    assert own["input_ids"] != chatml["input_ids"]  # SmolLM2's own adds a default system turn
    assert features()["input_ids"] == own["input_ids"]  # and the same template hits again


# -- Chinese -------------------------------------------------------------------------------
def test_chinese_records_train_and_generate(data_dir: Path, cache_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "zh"
    train(*lm_args(data_dir, cache_dir, run_dir, "task=instruction-zh", "data.max_train_samples=16",
                   "trainer.max_steps=2", "task.num_samples=1", "task.generation.max_new_tokens=4"))
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert any("\u4e00" <= ch <= "\u9fff" for ch in samples[0]["reference"])
    assert "\\u" not in (run_dir / "samples.jsonl").read_text()  # readable, not escaped
    out = tmp_path / "zh.jsonl"
    (tmp_path / "in.jsonl").write_text(json.dumps({"instruction": "你好"}, ensure_ascii=False))
    assert main(["generate", str(run_dir), "--input", str(tmp_path / "in.jsonl"), "--output",
                 str(out), "--max-new-tokens", "3"]) == 0
    assert read_jsonl(out)[0]["instruction"] == "你好" and read_jsonl(out)[0]["new_tokens"] > 0


# -- bad input: one line, exit 2 -------------------------------------------------------------
def write_records(folder: Path, records: list[dict]) -> Path:
    (folder / "alpaca_sample").mkdir(parents=True)
    for split in ("train", "validation"):
        (folder / "alpaca_sample" / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records))
    return folder


ERRORS = {
    "empty_output": ([{"instruction": "a", "input": "", "output": ""}], [], "empty"),
    "no_assistant_turn": ([{"messages": [{"role": "user", "content": "hi"}]}], [], "assistant"),
    "unknown_role": ([{"messages": [{"role": "robot", "content": "hi"},
                                    {"role": "assistant", "content": "yo"}]}], [], "robot"),
    "no_chat_template": (None, ["model=tiny-bert"], "chat template"),
    "missing_gguf": (None, ["model.gguf_file=nope.gguf"], "nope.gguf"),
    "packed_classification": (None, ["task=sentiment", "trainer.batching=packed"],
                              "trainer.batching=packed"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_instruction_user_errors_are_one_line_exit_2(case: str, tmp_path: Path, data_dir: Path,
                                                     in_process: None,  # noqa: F811
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    records, extra, expected = ERRORS[case]
    data = write_records(tmp_path / "data", records) if records else data_dir
    code = main(["train", *lm_args(data, tmp_path / "cache", tmp_path / "run", *extra)])
    out, err = capfd.readouterr()
    assert_one_line(code, out, err, expected, tmp_path / "run")


# -- the real model -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_lowers_its_validation_loss_on_alpaca(data_dir: Path, cache_dir: Path,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "smollm2"
    train(*lm_args(data_dir, cache_dir, run_dir, "model=smollm2", "data.max_train_samples=32",
                   "data.max_length=192", "trainer.batch_size=4", "trainer.batching=packed",
                   "trainer.max_steps=4", "optimizer.lr=1e-4", "task.num_samples=0"))
    evaluations = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "validation"]
    assert [e["step"] for e in evaluations] == [0, 4]
    assert evaluations[-1]["loss"] < evaluations[0]["loss"]
    assert evaluations[0]["loss"] < 3.0  # a pretrained instruct model, not a random one
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", "Name three primary colours.",
                 "--max-new-tokens", "12"]) == 0
    answer = capsys.readouterr().out.lower()
    assert any(colour in answer for colour in ("red", "blue", "yellow")), answer


# -- the batch plans: every document once an epoch, the same number of steps every epoch ---
def test_token_and_packed_batches_cover_each_document_once_within_their_budgets() -> None:
    from sft.train.sampling import PackedBatches, TokenBatches

    lengths = [int(x) for x in torch.randint(5, 120, (500,), generator=torch.Generator().manual_seed(0))]
    tokens = TokenBatches(lengths, budget=512, seed=1, world_size=1)
    packed = PackedBatches(lengths, row_tokens=128, rows=4, seed=1)
    for epoch in range(3):
        batches = tokens.epoch(epoch)
        assert len(batches) == tokens.per_epoch
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert all(len(b) * max(lengths[i] for i in b) <= 512 for b in batches)
        rows = [row for batch in packed.epoch(epoch) for row in batch]
        assert len(packed.epoch(epoch)) == packed.per_epoch
        assert sorted(i for row in rows for i in row) == list(range(500))
        assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
        assert all(len(batch) <= 4 for batch in packed.epoch(epoch))
    assert tokens.epoch(0) != tokens.epoch(1)  # shuffled per epoch
    assert packed.epoch(0) != packed.epoch(1)
    halves = [TokenBatches(lengths, 512, 1, rank, 2).epoch(0) for rank in (0, 1)]
    assert not {i for b in halves[0] for i in b} & {i for b in halves[1] for i in b}
