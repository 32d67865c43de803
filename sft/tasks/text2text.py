"""Text to text: summarization (ROUGE) and translation (sacreBLEU), scored on generations.

One family on both model kinds, picked from the model's config: an encoder-decoder reads the
source (after task.source_prefix) and is trained on the target; a causal LM reads the source
inside task.prompt as a chat turn and is trained on the target only (sft.tasks.lm).

Evaluation computes the teacher-forced loss and then generates for the same batch (length
sorted, KV cache, task.generation), streaming each prediction into the scorer's running sums
and to predictions-<split>.jsonl; nothing else is kept, so memory does not grow with the
split. Mean generated length and the fraction of outputs cut at max_new_tokens are reported
beside the scores, because a capped output is a truncated one.
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.config.schema import DataConfig, ModelConfig
from sft.config.tasks import GenerationConfig, SummarizationConfig, TextToTextConfig, TranslationConfig
from sft.errors import ConfigError, DataError
from sft.metrics.generation import BleuScorer, RougeScorer
from sft.models.loading import DECODER_ONLY, ENCODER_ONLY, model_config, model_kind
from sft.tasks.base import Evaluator
from sft.tasks.chat import prompt_text
from sft.tasks.lm import CausalLM, LMTask, Seq2SeqLM

log = logging.getLogger("sft")

CAPPED_WARNING = 0.05  # more outputs than this cut at max_new_tokens: warn loudly
T5_FAMILY = ("t5", "mt5", "umt5", "longt5")
MARGIN = 4  # tokens kept free when fitting a source into a causal LM's max_length


class TextToTextEvaluator(Evaluator):
    STATE = ("new_tokens", "capped", "count")

    def __init__(self, task: TextToTextTask) -> None:
        super().__init__()
        self.task = task
        self.scorer = task.scorer()
        self.new_tokens = self.capped = self.count = 0

    def update(self, model: PreTrainedModel, batch: dict[str, Any]) -> None:
        lm = self.task.lm
        loss_sum, results = lm.evaluate_batch(model, batch, self.task.config.generation)
        self.add_loss(loss_sum, lm.counts(batch).targets)
        for result, source, references in zip(results, batch["source"], batch["references"],
                                              strict=True):
            self.scorer.add(result["generation"], list(references))
            self.new_tokens += result["new_tokens"]
            self.capped += result["hit_max_new_tokens"]
            self.count += 1
            self.write({"source": source, "references": references,
                        "prediction": result["generation"], **{k: result[k] for k in (
                            "new_tokens", "hit_max_new_tokens")}})

    def state(self) -> dict[str, Any]:
        return {**super().state(), "scores": self.scorer.sums()}

    def merge(self, states: list[dict[str, Any]]) -> None:
        super().merge([{k: v for k, v in s.items() if k != "scores"} for s in states])
        self.scorer = type(self.scorer).merged([s["scores"] for s in states])

    def metrics(self) -> dict[str, float]:
        n = max(self.count, 1)
        capped = self.capped / n
        self.task.scored_with = self.scorer  # what signatures() describes
        if capped > CAPPED_WARNING:
            log.warning("%.0f%% of the generations stopped at task.generation.max_new_tokens=%d, "
                        "cut short: raise it (or train longer) before trusting the scores",
                        100 * capped, self.task.config.generation.max_new_tokens)
        return {**self.scorer.result(), "gen_len": self.new_tokens / n,
                "max_new_tokens_hit": capped}


class TextToTextTask(LMTask):
    config_class: type[TextToTextConfig] = SummarizationConfig
    load_best = 'pipeline("summarization", model="best")'
    drop_reason = "no target token left within data.max_length"
    # logits exist only for target positions (the loss) and the last position (generation),
    # so evaluation batches can be wide; 64 rows of 256 tokens amortize each decoding step
    eval_batch_tokens = 16384
    config: TextToTextConfig

    def __init__(self, config: TextToTextConfig, tokenizer: PreTrainedTokenizerBase,
                 data: DataConfig, model: ModelConfig | None = None) -> None:
        if model is None:
            raise ConfigError(f"task '{config.name}' needs the model config to pick its model kind")
        config_of_model = model_config(model)  # loaded once: kind, ids and prefix read it
        kind = model_kind(config_of_model)
        if kind == ENCODER_ONLY:
            raise ConfigError(
                f"model '{model.name}' is encoder-only and cannot generate text for task "
                f"'{config.name}'; use an encoder-decoder (model=bert2bert-minilm warm-starts "
                "one from MiniLM; t5-small, bart-base) or a causal LM (model=smollm2)")
        if kind == DECODER_ONLY:
            if config.prompt is None:
                raise ConfigError(f"model '{model.name}' is a causal LM and task.prompt is null: "
                                  "set task.prompt to a template with {source} in it")
            lm: CausalLM | Seq2SeqLM = CausalLM(tokenizer, config.chat_template)
            self.prefix = ""
        else:
            lm = Seq2SeqLM(tokenizer, config_of_model)
            prefix = config.source_prefix
            if prefix is None:  # T5 was pre-trained with task prefixes; others were not
                t5 = config_of_model.model_type in T5_FAMILY
                prefix = config.T5_PREFIX if t5 else ""
            self.prefix = prefix.format(**config.names())
        super().__init__(config, tokenizer, data, lm)
        self.kind = kind
        self._prompt_tokens: int | None = None
        self.scored_with: RougeScorer | BleuScorer | None = None  # the last evaluation's
        self.scorer()  # imports its libraries now (rouge_score: nltk, ~3 s), not in eval_s

    def features_depend_on(self) -> Any:
        """The model decides the kind, the T5 prefix and which target token is fed."""
        lm = self.lm
        fed = sorted(lm.fed_not_predicted) if isinstance(lm, Seq2SeqLM) else None
        return [self.kind, self.prefix, fed]

    # -- records -----------------------------------------------------------------------
    def source(self, record: dict[str, Any]) -> str | None:
        return record.get(self.config.source_column)

    def references(self, record: dict[str, Any]) -> list[str]:
        """The record's target and further references, without repeats or blanks."""
        c = self.config
        found = [record.get(column) for column in (c.target_column, *c.reference_columns)]
        return list(dict.fromkeys(r for r in found if isinstance(r, str) and r.strip()))

    def check_columns(self, columns: list[str], split: str) -> None:
        c = self.config
        if c.source_column not in columns:
            raise DataError(f"source column '{c.source_column}' not found in the {split} split "
                            f"(columns: {', '.join(columns)}); set task.source_column")
        if not {c.target_column, *c.reference_columns} & set(columns):
            raise DataError(f"target column '{c.target_column}' not found in the {split} split "
                            f"(columns: {', '.join(columns)}); set task.target_column")

    def prepare_split(self, dataset: Dataset, split: str) -> Dataset:
        self.check_columns(dataset.column_names, split)
        return dataset

    # -- features ----------------------------------------------------------------------
    def messages(self, source: str, target: str | None = None) -> list[dict[str, str]]:
        c = self.config
        user = str(c.prompt)
        for key, value in {**c.names(), "source": source}.items():  # the source last: its
            user = user.replace("{" + key + "}", value)  # own braces stay as written
        turns = [{"role": "system", "content": c.system_prompt}] if c.system_prompt else []
        turns.append({"role": "user", "content": user})
        return turns + ([{"role": "assistant", "content": target}] if target is not None else [])

    def fit_source(self, source: str, target_tokens: int) -> str:
        """A causal LM reads prompt + source + target in data.max_length tokens: cut the
        source (never the target, which would leave nothing to learn)."""
        if self._prompt_tokens is None:
            empty = prompt_text(self.tokenizer, self.tokenizer.chat_template, self.messages(""))
            self._prompt_tokens = len(self.tokenizer(empty, add_special_tokens=False)["input_ids"])
        budget = self.data.max_length - self._prompt_tokens - target_tokens - MARGIN
        if budget < 1:
            raise ConfigError(f"data.max_length={self.data.max_length} leaves no room for the "
                              f"source after the prompt and task.max_target_length; raise it")
        ids = self.tokenizer(source, add_special_tokens=False)["input_ids"]
        return source if len(ids) <= budget else self.tokenizer.decode(ids[:budget])

    def encode(self, source: str, target: str | None) -> tuple[list[int], list[int]] | None:
        c, lm = self.config, self.lm
        if isinstance(lm, Seq2SeqLM):
            return lm.encode(self.prefix + source, target, self.data.max_length,
                             c.max_target_length)
        if target is None:  # a prompt to continue
            text = prompt_text(self.tokenizer, self.tokenizer.chat_template,
                               self.messages(self.fit_source(source, c.max_target_length)))
            return self.tokenizer(text, add_special_tokens=False)["input_ids"], []
        target_ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        target = self.tokenizer.decode(target_ids[: c.max_target_length])
        source = self.fit_source(source, min(len(target_ids), c.max_target_length))
        return lm.encode(self.messages(source, target), self.data.max_length)

    def featurize(self, rows: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": [], "source": [], "references": []}
        for values in zip(*rows.values(), strict=True):
            record = dict(zip(rows, values, strict=True))
            source, references = self.source(record), self.references(record)
            if not isinstance(source, str) or not references:
                raise DataError(f"a record has no source text or no reference: {str(record)[:200]}")
            tokens = self.encode(source, references[0])
            if tokens is None:  # dropped (and counted by the featurizer)
                continue
            out["input_ids"].append(tokens[0])
            out["labels"].append(tokens[1])
            out["source"].append(source)
            out["references"].append(references)
        return out

    # -- evaluation and prediction -----------------------------------------------------
    def scorer(self) -> RougeScorer | BleuScorer:
        return RougeScorer()

    def evaluator(self) -> TextToTextEvaluator:
        return TextToTextEvaluator(self)

    def prediction_source(self, record: dict[str, Any], where: str) -> str:
        for value in (self.source(record), record.get("prompt"), record.get("text")):
            if isinstance(value, str):
                return value
        raise DataError(f"{where} has no source text; give each record "
                        f"'{self.config.source_column}', 'prompt' or 'text'")

    def predict(self, model: PreTrainedModel, records: list[dict[str, Any]], batch_size: int,
                generation: GenerationConfig | None = None) -> list[dict[str, Any]]:
        rows = []
        for i, record in enumerate(records):
            encoded = self.encode(self.prediction_source(record, f"record {i}"), None)
            assert encoded is not None
            rows.append(encoded[0])
        return self.lm.generate(model, rows, generation or self.config.generation, batch_size)


class SummarizationTask(TextToTextTask):
    config_class = SummarizationConfig


class TranslationTask(TextToTextTask):
    config_class = TranslationConfig
    load_best = 'pipeline("translation", model="best")'
    config: TranslationConfig

    def _pair(self, record: dict[str, Any]) -> dict[str, Any]:
        """{"en": ..., "de": ...}: nested under task.translation_column, or flat columns."""
        column = self.config.translation_column
        pair = record.get(column) if column else None
        return pair if isinstance(pair, dict) else record

    def source(self, record: dict[str, Any]) -> str | None:
        return self._pair(record).get(self.config.source_lang)

    def references(self, record: dict[str, Any]) -> list[str]:
        target = self._pair(record).get(self.config.target_lang)
        return [target] if isinstance(target, str) and target.strip() else []

    def check_columns(self, columns: list[str], split: str) -> None:
        c = self.config
        if c.translation_column not in columns and not {c.source_lang, c.target_lang} <= set(columns):
            raise DataError(f"neither column '{c.translation_column}' nor columns '{c.source_lang}' "
                            f"and '{c.target_lang}' are in the {split} split (columns: "
                            f"{', '.join(columns)}); set task.translation_column or "
                            "task.source_lang / task.target_lang")

    def prepare_split(self, dataset: Dataset, split: str) -> Dataset:
        super().prepare_split(dataset, split)
        c = self.config
        first = self._pair(dataset[0])
        for lang, what in ((c.source_lang, "source_lang"), (c.target_lang, "target_lang")):
            if lang not in first:
                raise DataError(f"task.{what}='{lang}' is not in the {split} records "
                                f"(languages: {', '.join(first)}); set task.{what}")
        return dataset

    def prediction_source(self, record: dict[str, Any], where: str) -> str:
        value = self.source(record) or record.get("source")
        return value if isinstance(value, str) else super().prediction_source(record, where)

    def scorer(self) -> BleuScorer:
        return BleuScorer(self.config.target_lang)

    def signatures(self) -> dict[str, str]:
        scorer = self.scored_with if isinstance(self.scored_with, BleuScorer) else self.scorer()
        return scorer.signatures()
