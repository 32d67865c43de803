"""Generation metrics: hand-computed ROUGE, equality with rouge_score and sacreBLEU, exact merges."""

from __future__ import annotations

import math
import pickle

import pytest
import sacrebleu
from rouge_score import rouge_scorer, tokenizers

from sft.metrics.generation import (
    BleuScorer,
    CjkRougeTokenizer,
    RougeScorer,
    bleu_tokenize,
    split_sentences,
)


def rouge(prediction: str, references: list[str]) -> dict[str, float]:
    """One example's ROUGE F-measures as fractions (0..1)."""
    scorer = RougeScorer()
    scorer.add(prediction, references)
    return {k: v / 100 for k, v in scorer.result().items()}


def test_rouge_hand_computed() -> None:
    # pred: the cat sat on the mat (6 tokens); ref: the cat is on the mat (6 tokens)
    # unigrams shared: the x2, cat, on, mat = 5 -> P = R = F = 5/6
    # bigrams: pred {the cat, cat sat, sat on, on the, the mat}, ref {the cat, cat is, is on,
    #   on the, the mat}: 3 shared of 5 each -> F = 3/5
    # LCS: the cat on the mat = 5 -> F = 5/6
    got = rouge("The cat sat on the mat.", ["The cat is on the mat."])
    assert got["rouge1"] == pytest.approx(5 / 6, abs=1e-6)
    assert got["rouge2"] == pytest.approx(3 / 5, abs=1e-6)
    assert got["rougeL"] == pytest.approx(5 / 6, abs=1e-6)


def test_rouge_stems() -> None:
    # stemmed: pred the boy is run (4), ref the boy run (3)  ("running", "runs" -> "run")
    # rouge1: 3 shared, P = 3/4, R = 1 -> F = 2 * 3/4 / (7/4) = 6/7
    # rouge2: pred {the boy, boy is, is run}, ref {the boy, boy run}: 1 shared, P = 1/3, R = 1/2
    #   -> F = 2 * 1/6 / (5/6) = 2/5
    # LCS: the boy run = 3 -> F = 6/7
    got = rouge("The boy is running.", ["The boy runs."])
    assert got["rouge1"] == pytest.approx(6 / 7, abs=1e-6)
    assert got["rouge2"] == pytest.approx(2 / 5, abs=1e-6)
    assert got["rougeL"] == pytest.approx(6 / 7, abs=1e-6)
    # without the stemmer only "the boy" matches: P = 2/4, R = 2/3 -> F = 4/7
    plain = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    assert plain.score("The boy runs.", "The boy is running.")["rouge1"].fmeasure == pytest.approx(4 / 7)


def test_sentence_split_offline() -> None:
    assert split_sentences("He left. She came back! Done?") == ["He left.", "She came back!", "Done?"]
    assert split_sentences("猫来了。狗走了！") == ["猫来了。", "狗走了！"]
    assert split_sentences("") == []


def test_rouge_lsum_is_summary_level() -> None:
    # ref: [the cat sat down] [the dog ran off]; pred: [the dog sat down] [the cat ran off]
    # rougeL over the whole text: cat/dog are swapped, LCS = the sat down the ran off = 6 of 8
    #   -> F = 3/4
    # rougeLsum: ref sentence 1 vs pred 1 LCS {the, sat, down}, vs pred 2 {the, cat}: union = all 4;
    #   ref sentence 2 vs pred 1 {the, dog}, vs pred 2 {the, ran, off}: union = all 4;
    #   hits 8 (no token over-counted), P = R = 8/8 -> F = 1
    prediction, reference = "The dog sat down. The cat ran off.", "The cat sat down. The dog ran off."
    got = rouge(prediction, [reference])
    assert got["rougeL"] == pytest.approx(3 / 4, abs=1e-6)
    assert got["rougeLsum"] == pytest.approx(1.0, abs=1e-6)
    own = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True).score(
        "The cat sat down.\nThe dog ran off.", "The dog sat down.\nThe cat ran off.")
    assert got["rougeLsum"] == pytest.approx(own["rougeLsum"].fmeasure, abs=1e-12)


def test_rouge_multi_reference_max_per_type() -> None:
    prediction = "red green blue black"
    # A: all 4 unigrams (rouge1 1), no bigram in order (rouge2 0), LCS 1 (rougeL 1/4)
    ref_a = "black blue green red"
    # B: red, green shared (rouge1 1/2), bigram "red green" 1 of 3 (rouge2 1/3), LCS 2 (rougeL 1/2)
    ref_b = "red green white pink"
    a, b = rouge(prediction, [ref_a]), rouge(prediction, [ref_b])
    assert (a["rouge1"], a["rouge2"], a["rougeL"]) == pytest.approx((1, 0, 1 / 4))
    assert (b["rouge1"], b["rouge2"], b["rougeL"]) == pytest.approx((1 / 2, 1 / 3, 1 / 2))
    for refs in ([ref_a, ref_b], [ref_b, ref_a]):
        both = rouge(prediction, refs)
        # rouge1 from A, rouge2 / rougeL / rougeLsum from B: each type its own best reference
        assert (both["rouge1"], both["rouge2"], both["rougeL"], both["rougeLsum"]) == pytest.approx(
            (1, 1 / 3, 1 / 2, 1 / 2))
    good = "red green blue black ."
    assert rouge(prediction, ["nothing here matches", good]) == rouge(prediction, [good])


ENGLISH = [
    ("The central bank raised interest rates by 0.25 percentage points on Wednesday.",
     "On Wednesday the central bank increased its key interest rate by a quarter point."),
    ("Researchers found that mice running on wheels lived longer.",
     "Mice that ran on exercise wheels had longer lifespans, researchers discovered."),
    ("#Person1# asks #Person2# for directions to the café; #Person2# draws a map.",
     "#Person2# draws #Person1# a map to the cafe after being asked for directions."),
    ("It's a well-known fact: U.S. exports fell 3% in Q2 (year-on-year).",
     "US exports declined three percent in the second quarter, a well known fact."),
    ("Stocks rallied. Investors cheered the news!", "The news cheered investors and stocks rallied."),
]


def test_english_equals_rouge_score() -> None:
    default = tokenizers.DefaultTokenizer(use_stemmer=True)
    ours = CjkRougeTokenizer()
    for prediction, reference in ENGLISH:
        assert ours.tokenize(prediction) == default.tokenize(prediction)
        assert ours.tokenize(reference) == default.tokenize(reference)
    types = ["rouge1", "rouge2", "rougeL"]
    official = rouge_scorer.RougeScorer(types, use_stemmer=True)
    scorer = RougeScorer()
    expected = dict.fromkeys(types, 0.0)
    for prediction, reference in ENGLISH:
        scorer.add(prediction, [reference])
        scores = official.score(reference, prediction)
        for t in types:
            expected[t] += scores[t].fmeasure
    result = scorer.result()
    for t in types:
        assert result[t] == 100.0 * expected[t] / len(ENGLISH)


def test_chinese_character_rouge() -> None:
    # the default tokenizer drops every Chinese character: nothing to score
    assert rouge_scorer.RougeScorer(["rouge1"]).score("猫在垫子上", "猫坐在垫子上")["rouge1"].fmeasure == 0
    # pred 猫坐在垫子上 (6 chars), ref 猫在垫子上 (5 chars)
    # rouge1: 5 shared, P = 5/6, R = 5/5 -> F = 2 * 5/6 / (11/6) = 10/11
    # rouge2: pred {猫坐, 坐在, 在垫, 垫子, 子上}, ref {猫在, 在垫, 垫子, 子上}: 3 shared,
    #   P = 3/5, R = 3/4 -> F = 2 * 9/20 / (27/20) = 2/3
    # LCS: 猫在垫子上 = 5 -> F = 10/11
    got = rouge("猫坐在垫子上。", ["猫在垫子上。"])
    assert got["rouge1"] == pytest.approx(10 / 11, abs=1e-6)
    assert got["rouge2"] == pytest.approx(2 / 3, abs=1e-6)
    assert got["rougeL"] == pytest.approx(10 / 11, abs=1e-6)
    assert CjkRougeTokenizer().tokenize("我用iPhone拍照。") == ["我", "用", "iphon", "拍", "照"]


def test_rouge_merge_empty_and_pickle() -> None:
    pairs = [(p, [r]) for p, r in ENGLISH] + [("", ["an empty prediction scores zero"])]
    whole, first, second = RougeScorer(), RougeScorer(), RougeScorer()
    for i, (prediction, references) in enumerate(pairs):
        whole.add(prediction, references)
        (first if i < 3 else second).add(prediction, references)
    merged = RougeScorer.merged(pickle.loads(pickle.dumps([first.sums(), second.sums()])))
    assert merged.count == whole.count == len(pairs)
    for key, value in whole.result().items():
        assert merged.result()[key] == pytest.approx(value, abs=1e-9)
    empty = RougeScorer()
    empty.add("", ["something"])
    assert empty.result() == dict.fromkeys(["rouge1", "rouge2", "rougeL", "rougeLsum"], 0.0)
    with pytest.raises(ValueError):
        RougeScorer().add("a prediction", [])


def test_bleu_hand_computed() -> None:
    scorer = BleuScorer()
    scorer.add("The cat sat on the mat.", ["The cat sat on the mat."])
    assert scorer.result()["bleu"] == pytest.approx(100.0)
    assert scorer.result()["chrf"] == pytest.approx(100.0)
    # the cat sat on the mat . / the cat is on the mat . (13a splits off the period, 7 tokens)
    # 1-grams 6/7; 2-grams {The cat, on the, the mat, mat .} 4/6; 3-grams {on the mat, the mat .}
    # 2/5; 4-grams {on the mat .} 1/4; BP = 1 -> BLEU = 100 * (6/7 * 4/6 * 2/5 * 1/4)^(1/4)
    scorer = BleuScorer()
    scorer.add("The cat sat on the mat.", ["The cat is on the mat."])
    expected = 100 * (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert scorer.result()["bleu"] == pytest.approx(expected, abs=1e-9)
    # no 4-gram match: sacreBLEU's exp smoothing makes it 100 / (2 * 3) (3 hypothesis 4-grams)
    scorer = BleuScorer()
    scorer.add("the cat sat on the mat", ["the cat is on the mat"])
    # 1-grams 5/6, 2-grams 3/5, 3-grams 1/4 (on the mat), 4-grams smoothed 1/6
    assert scorer.result()["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)
    assert scorer.result()["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(["the cat sat on the mat"], [["the cat is on the mat"]]).score, abs=1e-9)


CORPUS = [
    ("The central bank raised rates on Wednesday.",
     ["The central bank raised interest rates on Wednesday.", "On Wednesday, rates went up."]),
    ("Mice running on wheels lived longer.", ["Mice that ran on wheels lived longer."]),
    ("", ["An empty prediction must not crash."]),
    ("Stocks rallied as investors cheered the news.",
     ["Stocks rallied.", "Investors cheered the news and stocks rallied.", "The market rose."]),
    ("He left the house at noon.", ["He left home at noon.", "At noon he left the house."]),
    ("It rained all day in Paris.", ["It rained all day long in Paris."]),
]


def streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacreBLEU's reference streams: stream k holds each example's k-th reference or None."""
    width = max(map(len, references))
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def test_bleu_chrf_equal_sacrebleu_and_merge_exactly() -> None:
    hyps = [p for p, _ in CORPUS]
    refs = streams([r for _, r in CORPUS])
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    expected_bleu, expected_chrf = bleu.corpus_score(hyps, refs).score, chrf.corpus_score(hyps, refs).score
    assert expected_bleu == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score, abs=1e-12)
    assert expected_chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, refs).score, abs=1e-12)
    whole, first, second = BleuScorer(), BleuScorer(), BleuScorer()
    for i, (prediction, references) in enumerate(CORPUS):
        whole.add(prediction, references)
        (first if i < 3 else second).add(prediction, references)
    merged = BleuScorer.merged(pickle.loads(pickle.dumps([first.sums(), second.sums()])))
    for scorer in (whole, merged):
        assert scorer.result()["bleu"] == pytest.approx(expected_bleu, abs=1e-9)
        assert scorer.result()["chrf"] == pytest.approx(expected_chrf, abs=1e-9)
        # reference counts differ (1..3): sacreBLEU signs that nrefs:var
        assert scorer.signatures() == {"bleu": bleu.get_signature().format(),
                                       "chrf": chrf.get_signature().format()}
        assert scorer.signatures()["bleu"].startswith("nrefs:var|")
    assert 0 < expected_bleu < 100 and 0 < expected_chrf < 100


def test_bleu_signature_single_reference() -> None:
    hyps = [p for p, _ in CORPUS]
    refs = [[r[0] for _, r in CORPUS]]
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    expected = (bleu.corpus_score(hyps, refs).score, chrf.corpus_score(hyps, refs).score)
    scorer = BleuScorer()
    for prediction, references in CORPUS:
        scorer.add(prediction, references[:1])
    assert (scorer.result()["bleu"], scorer.result()["chrf"]) == pytest.approx(expected, abs=1e-9)
    assert scorer.signatures() == {
        "bleu": f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}",
        "chrf": f"nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:{sacrebleu.__version__}"}
    assert scorer.signatures()["bleu"] == bleu.get_signature().format()
    assert scorer.signatures()["chrf"] == chrf.get_signature().format()


def test_bleu_empty_and_errors() -> None:
    scorer = BleuScorer()
    assert scorer.result() == {"bleu": 0.0, "chrf": 0.0}
    scorer.add("", ["a reference"])
    assert scorer.result() == {"bleu": 0.0, "chrf": 0.0}
    with pytest.raises(ValueError):
        scorer.add("a prediction", [])
    with pytest.raises(ValueError):
        BleuScorer.merged([BleuScorer("en").sums(), BleuScorer("zh").sums()])


def test_chinese_bleu_uses_zh_tokenizer() -> None:
    assert (bleu_tokenize("zh"), bleu_tokenize("zh_CN"), bleu_tokenize("ja"), bleu_tokenize("de")) == (
        "zh", "zh", "char", "13a")
    pairs = [("猫坐在垫子上。", ["猫在垫子上。"]),
             ("今天天气很好，我们去公园吧。", ["今天天气不错，我们去公园。"])]
    scorer = BleuScorer("zh")
    for prediction, references in pairs:
        scorer.add(prediction, references)
    hyps, refs = [p for p, _ in pairs], [[r[0] for _, r in pairs]]
    assert scorer.result()["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(hyps, refs, tokenize="zh").score, abs=1e-9)
    assert scorer.result()["bleu"] != pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score)
    assert "|tok:zh|" in scorer.signatures()["bleu"]
    assert not math.isnan(scorer.result()["chrf"])
    assert "|tok:char|" in BleuScorer("ja").signatures()["bleu"]
