"""The config schema of each task family, keyed by `task.type`.

Schemas live here, beside the run schema, so composing and validating a config never imports
the task plug-ins (sft.tasks), which name their schema with `config_class`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from sft.config.schema import TaskConfig
from sft.errors import ConfigError


@dataclass(frozen=True)
class ClassificationConfig(TaskConfig):
    METRICS: ClassVar[dict[str, bool]] = {"accuracy": True, "f1_macro": True, "mcc": True}

    type: str = "classification"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: list[str] = field(default_factory=list)
    # the head reads only the first token, so the last layer computes only that token
    # (same outputs and gradients, less compute; BERT-style models, see sft.models.cls_only)
    cls_only_last_layer: bool = True
    # training loss sum_i w[y_i] * ce_i: null | balanced (n / (n_classes * count) over the
    # train split) | one weight per label name; evaluation's loss stays unweighted
    class_weights: Any = None

    def validate(self) -> None:
        super().validate()
        if len(self.label_names) < 2:
            raise ConfigError(f"task.label_names needs at least 2 names, got {self.label_names}")
        w = self.class_weights
        if w is None or w == "balanced":
            return
        if not (isinstance(w, list) and len(w) == len(self.label_names)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0
                        for x in w) and any(w)):
            raise ConfigError(f"task.class_weights must be balanced, null, or {len(self.label_names)} "
                              f"weights >= 0, one per task.label_names {list(self.label_names)}; "
                              f"got {w}")


@dataclass(frozen=True)
class TokenClassificationConfig(TaskConfig):
    METRICS: ClassVar[dict[str, bool]] = {"accuracy": True}
    ENTITY_METRICS: ClassVar[tuple[str, ...]] = ("precision", "recall", "f1")

    type: str = "token_classification"
    tokens_column: str = "tokens"  # list of words per row
    tags_column: str = "tags"  # list of tags (names or ids into label_names) per row
    tag_column: int = -1  # CoNLL files: the column that holds the tag (-1: the last)
    label_names: list[str] = field(default_factory=list)
    entity_metrics: bool = True  # IOB2 entity P/R/F1 (seqeval strict); false: accuracy only
    # words of the neighbouring sentences of the same document read on each side of a
    # sentence (CoNLL files, whose -DOCSTART- lines mark documents); 0: the sentence alone
    document_context: int = 0
    metric: str = "f1"

    def metrics(self) -> dict[str, bool]:
        found = super().metrics()
        if self.entity_metrics:
            types = sorted({name[2:] for name in self.label_names if name[:2] in {"B-", "I-"}})
            found |= {f"{m}{suffix}": True for m in self.ENTITY_METRICS
                      for suffix in ["", *(f"_{t}" for t in types)]}
        return found

    def validate(self) -> None:
        super().validate()
        if not self.label_names:
            raise ConfigError("task.label_names is empty; list the tag set (e.g. [O, B-PER, I-PER])")
        if self.entity_metrics:
            bad = [n for n in self.label_names if n != "O" and n[:2] not in {"B-", "I-"}]
            if bad:
                raise ConfigError(f"task.label_names {bad} are not IOB2 tags (O, B-X, I-X); "
                                  "set task.entity_metrics=false for non-entity tag sets")
        if self.document_context < 0:
            raise ConfigError(f"task.document_context must be >= 0 words, got "
                              f"{self.document_context}")


@dataclass(frozen=True)
class QuestionAnsweringConfig(TaskConfig):
    METRICS: ClassVar[dict[str, bool]] = {"exact_match": True, "f1": True}
    LABEL_SMOOTHING: ClassVar[bool] = False  # the targets are span positions

    type: str = "qa"
    id_column: str = "id"
    question_column: str = "question"
    context_column: str = "context"
    answers_column: str = "answers"  # {"text": [...], "answer_start": [...]} as hub `squad`
    doc_stride: int = 128  # tokens shared by consecutive windows of a long context
    max_answer_length: int = 30  # in tokens
    n_best: int = 20  # start and end candidates per window
    # local SQuAD JSON: split -> [from, to) fraction of the articles, shuffled with
    # article_seed (so one file can give disjoint train and validation articles)
    article_split: dict[str, list[float]] = field(default_factory=dict)
    article_seed: int = 42
    metric: str = "f1"

    def validate(self) -> None:
        super().validate()
        for name in ("doc_stride", "max_answer_length", "n_best"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task.{name} must be >= 1, got {getattr(self, name)}")
        for split, span in self.article_split.items():
            if len(span) != 2 or not 0 <= span[0] < span[1] <= 1:
                raise ConfigError(f"task.article_split.{split} must be [from, to) with "
                                  f"0 <= from < to <= 1, got {span}")


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings of every generative task: explicit, never transformers' defaults
    (whose max_length of 20 tokens silently cuts answers)."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    num_beams: int = 1  # 1: greedy (or sampling with do_sample)
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    early_stopping: bool = False

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"task.generation.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ConfigError(f"task.generation.num_beams must be >= 1, got {self.num_beams}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError("task.generation.min_new_tokens must be in 0..max_new_tokens, got "
                              f"{self.min_new_tokens}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("task.generation needs temperature > 0 and 0 < top_p <= 1")


@dataclass(frozen=True)
class InstructionConfig(TaskConfig):
    """Instruction / chat tuning of causal LMs: loss on the assistant turns."""

    METRICS: ClassVar[dict[str, bool]] = {"perplexity": False}
    BATCHINGS: ClassVar[tuple[str, ...]] = ("examples", "tokens", "packed")
    EVAL_FIRST: ClassVar[bool] = True
    FORMATS: ClassVar[tuple[str, ...]] = ("auto", "alpaca", "messages")

    type: str = "instruction"
    format: str = "auto"  # alpaca (instruction/input/output) | messages (chat) | auto: detected
    instruction_column: str = "instruction"
    input_column: str = "input"
    output_column: str = "output"
    messages_column: str = "messages"
    system_prompt: str | None = None  # a system turn put before every alpaca record
    # null: the tokenizer's own template; a name (chatml, alpaca) or a Jinja string; the one
    # used is saved with best/ and the checkpoints
    chat_template: str | None = None
    train_on_prompt: bool = False  # true: loss on every token, not only the assistant turns
    num_samples: int = 3  # validation prompts generated at each evaluation (samples.jsonl)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    metric: str = "loss"

    def columns(self) -> dict[str, str]:
        return {"instruction": self.instruction_column, "input": self.input_column,
                "output": self.output_column, "messages": self.messages_column}

    def validate(self) -> None:
        super().validate()
        if self.format not in self.FORMATS:
            raise ConfigError(f"task.format must be one of {', '.join(self.FORMATS)}, "
                              f"got '{self.format}'")
        if self.num_samples < 0:
            raise ConfigError(f"task.num_samples must be >= 0, got {self.num_samples}")
        self.generation.validate()


# language codes -> names, for prompts and T5 prefixes ("translate English to German: ")
LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
             "ro": "Romanian", "cs": "Czech", "ru": "Russian", "zh": "Chinese", "ja": "Japanese"}


@dataclass(frozen=True)
class TextToTextConfig(TaskConfig):
    """A source text in, a target text out (summarization, translation), on encoder-decoders
    (the source, after source_prefix) and on causal LMs (the source inside `prompt`, as a
    chat turn; the loss on the target only); scored on generated text."""

    BATCHINGS: ClassVar[tuple[str, ...]] = ("examples", "tokens", "packed")  # packed: causal LMs
    EVAL_FIRST: ClassVar[bool] = True  # the step-0 score is the zero-shot baseline
    COMMON_METRICS: ClassVar[dict[str, bool]] = {"gen_len": False, "max_new_tokens_hit": False}
    T5_PREFIX: ClassVar[str] = ""

    source_column: str = "source"
    target_column: str = "target"
    # further reference columns (DialogSum test: summary1..3); a record's references are its
    # target and these, and a prediction scores the max over them
    reference_columns: list[str] = field(default_factory=list)
    max_target_length: int = 128  # target tokens trained on (longer targets are cut)
    # encoder-decoders: put before every source; null: the task's T5 prefix for T5-family
    # models ("summarize: "), nothing for others
    source_prefix: str | None = None
    # causal LMs: the user turn, {source} replaced by the source text (also {source_language}
    # and {target_language}); null refuses a causal LM
    prompt: str | None = None
    system_prompt: str | None = None
    chat_template: str | None = None  # causal LMs without one: chatml | alpaca | zephyr | Jinja
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def metrics(self) -> dict[str, bool]:
        return {**super().metrics(), **self.COMMON_METRICS}

    def names(self) -> dict[str, str]:
        """What a prompt or prefix may name besides the source."""
        return {}

    def validate(self) -> None:
        super().validate()
        if self.max_target_length < 1:
            raise ConfigError(f"task.max_target_length must be >= 1, got {self.max_target_length}")
        if self.prompt is not None and "{source}" not in self.prompt:
            raise ConfigError("task.prompt must contain {source} (where the source text goes)")
        self.generation.validate()


@dataclass(frozen=True)
class SummarizationConfig(TextToTextConfig):
    METRICS: ClassVar[dict[str, bool]] = {"rouge1": True, "rouge2": True, "rougeL": True,
                                          "rougeLsum": True}
    T5_PREFIX: ClassVar[str] = "summarize: "

    type: str = "summarization"
    metric: str = "rougeL"


@dataclass(frozen=True)
class TranslationConfig(TextToTextConfig):
    METRICS: ClassVar[dict[str, bool]] = {"bleu": True, "chrf": True}
    T5_PREFIX: ClassVar[str] = "translate {source_language} to {target_language}: "

    type: str = "translation"
    source_lang: str = "en"
    target_lang: str = "de"
    # records {"translation": {"en": ..., "de": ...}} (wmt style); records without that
    # column are read from flat columns named by the language codes
    translation_column: str | None = "translation"
    metric: str = "bleu"

    def names(self) -> dict[str, str]:
        return {"source_language": LANGUAGES.get(self.source_lang, self.source_lang),
                "target_language": LANGUAGES.get(self.target_lang, self.target_lang)}

    def validate(self) -> None:
        super().validate()
        if self.source_lang == self.target_lang:
            raise ConfigError(f"task.source_lang and task.target_lang are both '{self.source_lang}'")


# keyed by each schema's own `type` default, the one place a family's type name is written
TASK_SCHEMAS: dict[str, type[TaskConfig]] = {
    schema.type: schema for schema in (ClassificationConfig, TokenClassificationConfig,
                                       QuestionAnsweringConfig, InstructionConfig,
                                       SummarizationConfig, TranslationConfig)
}


def task_schema(task_type: str | None) -> type[TaskConfig]:
    if task_type not in TASK_SCHEMAS:
        raise ConfigError(f"unknown task.type '{task_type}'; known types: {', '.join(TASK_SCHEMAS)}")
    return TASK_SCHEMAS[task_type]
