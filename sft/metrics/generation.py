"""Generation metrics: ROUGE (rouge_score) and BLEU / chrF (sacreBLEU).

Both scorers stream like SquadScorer (add / sums / merged / result), so evaluation split across
DDP ranks merges to the same numbers as one pass. ROUGE is rouge_score's own scorer (stemming,
rougeLsum over one sentence per line, multi-reference max per type as in score_multi); BLEU and
chrF keep sacreBLEU's own sufficient statistics, which are sums, so merged shards equal
sacrebleu.corpus_bleu / corpus_chrf on the whole corpus exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from sacrebleu.metrics import BLEU, CHRF

if TYPE_CHECKING:
    from nltk.tokenize.punkt import PunktSentenceTokenizer

# rouge_score and Punkt are imported where first used: both import nltk, whose __init__ pulls in
# scipy, scikit-learn and pyarrow (about 3 s), which BLEU and importing this module need not pay.

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# One token per character: CJK Unified Ideographs (with extension A, the compatibility block and
# the supplementary ideographic planes), Hiragana, Katakana (letters and marks, not the ・ / ゠
# punctuation), half-width Katakana and Hangul syllables.
_CJK_CHARS = (
    "\u3041-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003ffff"
)
_CJK_SPLIT_RE = re.compile(f"([{_CJK_CHARS}])")
# Punkt knows only Latin sentence ends; a full-width 。！？ also ends a sentence.
_CJK_SENTENCE_END_RE = re.compile("(?<=[。！？])")


@cache
def _punkt() -> PunktSentenceTokenizer:
    """Punkt with no trained parameters: needs no nltk.download (punkt data), so it runs offline
    and splits the same everywhere. Unlike nltk.sent_tokenize's trained English model it knows no
    abbreviations ("Mr." ends a sentence), which only moves rougeLsum."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer()


class CjkRougeTokenizer:
    """rouge_score's default tokenizer (with the Porter stemmer) plus one token per CJK character.

    The default drops every character outside [a-z0-9], so Chinese or Japanese text has no tokens
    and scores 0. Text between CJK characters goes through rouge_score's own tokenizer unchanged,
    so text without CJK gets exactly the default's tokens (and scores).
    """

    def __init__(self, use_stemmer: bool = True) -> None:
        from rouge_score import tokenizers

        self._default = tokenizers.DefaultTokenizer(use_stemmer=use_stemmer)

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        # with the capturing group, odd indices are the CJK characters split on
        for i, piece in enumerate(_CJK_SPLIT_RE.split(text)):
            if i % 2:
                tokens.append(piece)
            elif piece:
                tokens.extend(self._default.tokenize(piece))
        return tokens


def split_sentences(text: str) -> list[str]:
    """Sentences of text (Punkt, then full-width CJK ends): rougeLsum scores one sentence a line."""
    return [part for sentence in _punkt().tokenize(text)
            for part in _CJK_SENTENCE_END_RE.split(sentence) if part.strip()]


def _lines(text: str) -> str:
    return "\n".join(split_sentences(text))


class RougeScorer:
    """ROUGE-1/2/L/Lsum F-measure in percent, mean over examples; multi-reference: per example
    and per ROUGE type the max over its references (rouge_score's score_multi, as the DialogSum
    official scoring does)."""

    def __init__(self) -> None:
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=CjkRougeTokenizer())
        self.totals = dict.fromkeys(ROUGE_TYPES, 0.0)
        self.count = 0

    def add(self, prediction: str, references: Sequence[str]) -> None:
        """Score one example against its references (at least one)."""
        if isinstance(references, str) or not references:
            raise ValueError("RougeScorer.add needs a non-empty sequence of reference strings")
        # one sentence a line for rougeLsum; the other types see the same tokens either way
        scores = self._scorer.score_multi([_lines(r) for r in references], _lines(prediction))
        for rouge_type in ROUGE_TYPES:
            self.totals[rouge_type] += scores[rouge_type].fmeasure
        self.count += 1

    def sums(self) -> dict[str, float]:
        """Plain numbers (picklable) to gather from every rank."""
        return {**self.totals, "count": float(self.count)}

    @classmethod
    def merged(cls, sums: list[dict[str, float]]) -> RougeScorer:
        """One scorer over the examples of several (e.g. one per rank)."""
        scorer = cls()
        for part in sums:
            for rouge_type in ROUGE_TYPES:
                scorer.totals[rouge_type] += part[rouge_type]
            scorer.count += int(part["count"])
        return scorer

    def result(self) -> dict[str, float]:
        n = max(1, self.count)
        return {rouge_type: 100.0 * total / n for rouge_type, total in self.totals.items()}


# sacreBLEU's own choice for a target language, except Japanese: ja-mecab needs mecab-python3 and
# ipadic, so Japanese falls back to the character tokenizer. Korean keeps 13a (it is spaced).
_BLEU_TOKENIZE = {"zh": "zh", "ja": "char"}


def bleu_tokenize(target_lang: str) -> str:
    """sacreBLEU tokenizer for a target language code ("zh", "zh-CN", "ja", "en", ...)."""
    return _BLEU_TOKENIZE.get(target_lang.lower().replace("_", "-").split("-")[0], "13a")


class BleuScorer:
    """sacreBLEU corpus BLEU and chrF from summed sufficient statistics, so shards merge exactly.

    An example's references are what sacreBLEU keeps for one segment of its reference streams
    (a stream may hold None where an example has fewer references), so the sums equal those of
    corpus_bleu / corpus_chrf over the same corpus, and so do the scores.
    """

    def __init__(self, target_lang: str = "en") -> None:
        self.target_lang = target_lang
        self._bleu = BLEU(tokenize=bleu_tokenize(target_lang))
        self._chrf = CHRF()
        # BLEU: [hyp_len, closest ref_len, correct 1..4, total 1..4]; chrF: [hyp, ref, match] by order
        self.bleu_stats = [0] * (2 + 2 * self._bleu.max_ngram_order)
        self.chrf_stats = [0] * (3 * self._chrf.order)
        self.nrefs: set[int] = set()  # the reference counts seen, for the signatures

    def add(self, prediction: str, references: Sequence[str]) -> None:
        """Add one example's statistics (best over its references, as sacreBLEU picks)."""
        if isinstance(references, str) or not references:
            raise ValueError("BleuScorer.add needs a non-empty sequence of reference strings")
        streams = [[ref] for ref in references]  # one segment, one stream per reference
        for metric, stats in ((self._bleu, self.bleu_stats), (self._chrf, self.chrf_stats)):
            (segment,) = metric._extract_corpus_statistics([prediction], streams)
            for i, value in enumerate(segment):
                stats[i] += value
        self.nrefs.add(len(references))

    def sums(self) -> dict[str, Any]:
        """Integer statistics (picklable) to gather from every rank, and the target language."""
        return {"target_lang": self.target_lang, "bleu": list(self.bleu_stats),
                "chrf": list(self.chrf_stats), "nrefs": sorted(self.nrefs)}

    @classmethod
    def merged(cls, sums: list[dict[str, Any]]) -> BleuScorer:
        """One scorer over the examples of several (e.g. one per rank)."""
        langs = {part["target_lang"] for part in sums}
        if len(langs) > 1:
            raise ValueError(f"cannot merge BLEU sums of different target languages: {sorted(langs)}")
        scorer = cls(langs.pop() if langs else "en")
        for part in sums:
            scorer.bleu_stats = [a + b for a, b in zip(scorer.bleu_stats, part["bleu"], strict=True)]
            scorer.chrf_stats = [a + b for a, b in zip(scorer.chrf_stats, part["chrf"], strict=True)]
            scorer.nrefs.update(part["nrefs"])
        return scorer

    def result(self) -> dict[str, float]:
        # copies: sacreBLEU's add-k smoothing writes into the lists it is given
        return {"bleu": self._bleu._compute_score_from_stats(list(self.bleu_stats)).score,
                "chrf": self._chrf._compute_score_from_stats(list(self.chrf_stats)).score}

    def signatures(self) -> dict[str, str]:
        """sacreBLEU's reproducibility signatures, e.g. nrefs:1|case:mixed|eff:no|tok:13a|...

        nrefs is "var" when examples have different reference counts, as sacreBLEU prints it.
        """
        num_refs = next(iter(self.nrefs)) if len(self.nrefs) == 1 else (-1 if self.nrefs else 0)
        signatures = {}
        for name, metric in (("bleu", self._bleu), ("chrf", self._chrf)):
            metric.num_refs = num_refs  # what sacreBLEU sets when it caches the references
            signatures[name] = metric.get_signature().format()
        return signatures
