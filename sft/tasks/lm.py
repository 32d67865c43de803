"""The language-model mechanics every generative task shares, one class per model kind.

A generative task (instruction tuning, summarization, translation) holds one of these as
`task.lm` and says only what the text is; the LM says how it becomes tokens, batches, a loss
and generations:

- CausalLM: decoder-only models. Text goes through the chat template; labels are stored
  shifted (labels[i] is the target at position i), so documents pack side by side; the LM
  head runs on target positions only; prompts are left-padded to generate.
- Seq2SeqLM: encoder-decoders (T5, BART, Marian, bert2bert). The source is the encoder's
  input, the target the decoder's labels (decoder inputs are the labels shifted right behind
  the decoder's start token, built here rather than by the model).
"""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sft.config.schema import DataConfig, ModelConfig, TaskConfig
from sft.config.tasks import GenerationConfig
from sft.data.collate import pad_columns
from sft.data.packing import pack_columns
from sft.errors import ConfigError
from sft.models.loading import load_model
from sft.tasks.base import IGNORE_INDEX, Counts, Task, cross_entropy_sum
from sft.tasks.chat import render, resolve_template, tokenize_with_labels
from sft.tasks.generation import decode_new, generate, generation_kwargs, stop_token_ids

PREVIEW_RECORDS = 3  # records shown in the run dir's preview.txt


def _set_generation_defaults(model: PreTrainedModel, gen: GenerationConfig, stops: list[int],
                             pad_id: int, **ids: Any) -> None:
    """best/ generates as sft does outside sft too (pipelines, model.generate): the same
    special ids and decoding settings, never transformers' 20-token default."""
    config = model.generation_config
    for key, value in {**generation_kwargs(gen, stops, pad_id), **ids}.items():
        setattr(config, key, value)
    config.max_length = None


class _LanguageModel:
    """What both kinds share: batched generation from rows of token ids."""

    decoder_only: bool
    tokenizer: PreTrainedTokenizerBase
    stops: list[int]

    def generate(self, model: PreTrainedModel, rows: list[list[int]], gen: GenerationConfig,
                 batch_size: int) -> list[dict[str, Any]]:
        return generate(model, self.tokenizer, rows, gen, self.stops,
                        decoder_only=self.decoder_only, batch_size=batch_size)


def sharded(model: PreTrainedModel) -> bool:
    """FSDP2-sharded (sft.parallel.strategies): a submodule outside a sharded unit, such as
    the LM head called on its own, only holds its shard, so the model runs whole."""
    return bool(getattr(model, "_is_fsdp_managed_module", False))


class CausalLM(_LanguageModel):
    decoder_only = True
    model_inputs = ("input_ids", "attention_mask", "position_ids")

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chat_template: str | None) -> None:
        # the template used is the tokenizer's from now on: saved with best/ and checkpoints,
        # and part of the feature cache key
        tokenizer.chat_template = resolve_template(tokenizer, chat_template)
        if tokenizer.pad_token_id is None:  # GPT-2 and friends: padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.stops = stop_token_ids(tokenizer)
        self.head_on_targets: bool | None = None  # None: not checked yet (see loss)

    def encode(self, messages: list[dict[str, str]], max_length: int,
               train_on_prompt: bool = False) -> tuple[list[int], list[int]] | None:
        """(input_ids, shifted labels) of a rendered conversation; None when no target token
        is left within max_length."""
        text, spans = render(self.tokenizer, self.tokenizer.chat_template, messages)
        return tokenize_with_labels(self.tokenizer, text, spans, max_length, train_on_prompt)

    def collate(self, columns: dict[str, list], pad_to_multiple_of: int | None) -> dict[str, Any]:
        columns = {**columns, "attention_mask": [[1] * len(ids) for ids in columns["input_ids"]]}
        pad = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {**columns, **pad_columns(columns, pad, pad_to_multiple_of)}

    def collate_packed(self, columns: dict[str, list], row_sizes: list[int],
                       pad_to_multiple_of: int | None) -> dict[str, Any]:
        batch: dict[str, Any] = pack_columns(columns, row_sizes, self.tokenizer.pad_token_id,
                                             pad_to_multiple_of)
        batch["documents"] = len(columns["input_ids"])
        batch["real_tokens"] = sum(len(ids) for ids in columns["input_ids"])
        return batch

    def counts(self, batch: dict[str, Any]) -> Counts:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        return Counts(examples=batch.get("documents", len(ids)),
                      tokens=int(mask.sum()) if mask is not None else batch["real_tokens"],
                      targets=int((batch["labels"] != IGNORE_INDEX).sum()), positions=ids.numel())

    def preview(self, dataset: Dataset) -> str:
        """The first records as the model sees them, trained tokens between [[ and ]]."""
        parts = []
        for row in dataset.select(range(min(PREVIEW_RECORDS, len(dataset)))):
            ids, labels = row["input_ids"], row["labels"]
            trained = [False] + [label != IGNORE_INDEX for label in labels[:-1]]
            text, start = "", 0
            for i in range(1, len(ids) + 1):  # decode runs of equal trained-ness together
                if i == len(ids) or trained[i] != trained[start]:
                    piece = self.tokenizer.decode(ids[start:i])
                    text += f"[[{piece}]]" if trained[start] else piece
                    start = i
            parts.append(text)
        return "\n\n---\n\n".join(parts) + "\n"

    def build_model(self, model_cfg: ModelConfig, gen: GenerationConfig) -> PreTrainedModel:
        model = load_model(AutoModelForCausalLM, model_cfg)
        _set_generation_defaults(model, gen, self.stops, self.tokenizer.pad_token_id)
        return model

    def forward(self, model: PreTrainedModel, batch: dict[str, Any], **kwargs: Any) -> Any:
        # no KV cache while training: with a cache, transformers ignores packed position_ids
        # and documents attend to each other
        return model(**{k: v for k, v in batch.items() if k in self.model_inputs}, use_cache=False,
                     **kwargs)

    def loss(self, model: PreTrainedModel, batch: dict[str, Any],
             label_smoothing: float = 0.0) -> torch.Tensor:
        """The LM head and its cross-entropy run on the target positions only: on alpaca
        about half the tokens are prompt, and the head (tokens x 49k vocabulary for SmolLM2)
        is the biggest matmul of a small LM (a step on CPU: 12.8 s -> 8.5 s). The model's
        own head runs on one position, so the last hidden state is checked against it once
        (a model that scales or caps its logits keeps the full path)."""
        if self.head_on_targets is False or sharded(model):
            return cross_entropy_sum(self.forward(model, batch).logits, batch["labels"],
                                     label_smoothing=label_smoothing)
        outputs = self.forward(model, batch, output_hidden_states=True, logits_to_keep=1)
        hidden = outputs.hidden_states[-1]
        head = getattr(model, "module", model).get_output_embeddings()  # DDP: the module
        if self.head_on_targets is None:
            with torch.no_grad():
                self.head_on_targets = torch.allclose(
                    head(hidden[:, -1:]).float(), outputs.logits.float(), atol=1e-3, rtol=1e-3)
            if not self.head_on_targets:
                return self.loss(model, batch, label_smoothing)
        keep = batch["labels"] != IGNORE_INDEX
        return cross_entropy_sum(head(hidden[keep]), batch["labels"][keep],
                                 label_smoothing=label_smoothing)

    def inputs_to_generate_from(self, batch: dict[str, Any]) -> list[list[int]]:
        """Each row's prompt: its tokens up to the one that predicts the first target."""
        rows = []
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            first = int((labels != IGNORE_INDEX).nonzero()[0])
            rows.append(ids[: first + 1].tolist())
        return rows

    def evaluate_batch(self, model: PreTrainedModel, batch: dict[str, Any],
                       gen: GenerationConfig) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """The batch's loss sum (teacher-forced) and a generation per row from its prompt."""
        rows = self.inputs_to_generate_from(batch)
        return self.loss(model, batch), self.generate(model, rows, gen, len(rows))


class Seq2SeqLM(_LanguageModel):
    decoder_only = False

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> None:
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else config.pad_token_id
        # bert2bert's config names none of these: BERT's [CLS] starts and [SEP] ends a target
        start, eos = (getattr(config, key, None) for key in ("decoder_start_token_id",
                                                              "eos_token_id"))
        self.start_id = (start if start is not None
                         else tokenizer.cls_token_id if tokenizer.cls_token_id is not None
                         else tokenizer.bos_token_id)
        eos = eos if eos is not None else (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id)
        if self.start_id is None or eos is None or self.pad_id is None:
            raise ConfigError("the model names no decoder start, end or padding token and the "
                              "tokenizer has none to use; set them in model.config_overrides "
                              "(decoder_start_token_id, eos_token_id, pad_token_id)")
        self.stops = eos if isinstance(eos, list) else [eos]
        # a target's leading token the decoder is fed rather than asked to predict: the start
        # token, or the [CLS] of a BERT-style tokenizer (no bos; BART's <s> stays a label)
        self.fed_not_predicted = {self.start_id}
        if tokenizer.bos_token_id is None and tokenizer.cls_token_id is not None:
            self.fed_not_predicted.add(tokenizer.cls_token_id)

    def encode(self, source: str, target: str | None, max_length: int,
               max_target_length: int) -> tuple[list[int], list[int]]:
        ids = self.tokenizer(source, truncation=True, max_length=max_length)["input_ids"]
        if target is None:
            return ids, []
        labels = self.tokenizer(text_target=target, truncation=True,
                                max_length=max_target_length + 1)["input_ids"]
        if labels and labels[0] in self.fed_not_predicted:
            labels = labels[1:]
        return ids, labels[:max_target_length]

    def collate(self, columns: dict[str, list], pad_to_multiple_of: int | None) -> dict[str, Any]:
        source = {"input_ids": columns["input_ids"],
                  "attention_mask": [[1] * len(ids) for ids in columns["input_ids"]]}
        batch: dict[str, Any] = {**columns, **pad_columns(
            source, {"input_ids": self.pad_id, "attention_mask": 0}, pad_to_multiple_of)}
        labels = pad_columns({"labels": columns["labels"]}, {"labels": IGNORE_INDEX},
                             pad_to_multiple_of)["labels"]
        decoder_inputs = torch.cat([torch.full((len(labels), 1), self.start_id), labels[:, :-1]], 1)
        batch["labels"] = labels
        batch["decoder_input_ids"] = decoder_inputs.masked_fill(decoder_inputs == IGNORE_INDEX,
                                                                self.pad_id)
        return batch

    def collate_packed(self, columns: dict[str, list], row_sizes: list[int],
                       pad_to_multiple_of: int | None) -> dict[str, Any]:
        raise ConfigError("trainer.batching=packed is for causal LMs; encoder-decoders take "
                          "examples or tokens")

    def counts(self, batch: dict[str, Any]) -> Counts:
        targets = int((batch["labels"] != IGNORE_INDEX).sum())
        return Counts(examples=len(batch["input_ids"]),
                      tokens=int(batch["attention_mask"].sum()) + targets, targets=targets,
                      positions=batch["input_ids"].numel() + batch["labels"].numel())

    def preview(self, dataset: Dataset) -> str:
        """The first records as the encoder and the decoder see them (source, then the
        trained target between [[ and ]])."""
        parts = [f"{self.tokenizer.decode(row['input_ids'])}\n=> "
                 f"[[{self.tokenizer.decode(row['labels'])}]]"
                 for row in dataset.select(range(min(PREVIEW_RECORDS, len(dataset))))]
        return "\n\n---\n\n".join(parts) + "\n"

    def build_model(self, model_cfg: ModelConfig, gen: GenerationConfig) -> PreTrainedModel:
        model = load_model(AutoModelForSeq2SeqLM, model_cfg)
        ids = {"decoder_start_token_id": self.start_id, "pad_token_id": self.pad_id,
               "eos_token_id": self.stops[0]}
        for key, value in ids.items():  # bert2bert: saved with best/, so it loads as trained
            if getattr(model.config, key, None) is None:
                setattr(model.config, key, value)
        _set_generation_defaults(model, gen, self.stops, self.pad_id,
                                 decoder_start_token_id=self.start_id)
        return model

    def forward(self, model: PreTrainedModel, batch: dict[str, Any], **kwargs: Any) -> Any:
        inputs = {} if "encoder_outputs" in kwargs else {"input_ids": batch["input_ids"]}
        return model(**inputs, attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["decoder_input_ids"], use_cache=False, **kwargs)

    def loss(self, model: PreTrainedModel, batch: dict[str, Any],
             label_smoothing: float = 0.0) -> torch.Tensor:
        return cross_entropy_sum(self.forward(model, batch).logits, batch["labels"],
                                 label_smoothing=label_smoothing)

    def evaluate_batch(self, model: PreTrainedModel, batch: dict[str, Any],
                       gen: GenerationConfig) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """The batch's loss sum and a generation per row, the encoder run once for both (HF's
        Seq2SeqTrainer runs it twice: in generate and in the loss forward)."""
        if sharded(model):  # the encoder alone cannot run: its embeddings live in the root
            encoded, inputs = None, {"input_ids": batch["input_ids"]}
            logits = self.forward(model, batch).logits
        else:
            encoded = model.get_encoder()(input_ids=batch["input_ids"],
                                          attention_mask=batch["attention_mask"])
            inputs = {"encoder_outputs": encoded}
            logits = self.forward(model, batch, encoder_outputs=encoded).logits
        out = model.generate(attention_mask=batch["attention_mask"], **inputs,
                             use_cache=True, **generation_kwargs(gen, self.stops, self.pad_id))
        return (cross_entropy_sum(logits, batch["labels"]),
                decode_new(self.tokenizer, out, 1, self.stops, gen.max_new_tokens))


class LMTask(Task):
    """A task whose batches, loss and model are its language model's (`self.lm`)."""

    eval_batch_tokens = 4096  # x 49k vocabulary (SmolLM2): 0.8 GB of fp32 logits per batch
    lm: CausalLM | Seq2SeqLM

    def __init__(self, config: TaskConfig, tokenizer: PreTrainedTokenizerBase, data: DataConfig,
                 lm: CausalLM | Seq2SeqLM) -> None:
        super().__init__(config, tokenizer, data)
        self.lm = lm

    def batchings(self) -> tuple[str, ...]:
        return self.config.BATCHINGS if self.lm.decoder_only else ("examples", "tokens")

    def collate(self, columns: dict[str, list], pad_to_multiple_of: int | None) -> dict[str, Any]:
        return self.lm.collate(columns, pad_to_multiple_of)

    def collate_packed(self, columns: dict[str, list], row_sizes: list[int],
                       pad_to_multiple_of: int | None) -> dict[str, Any]:
        return self.lm.collate_packed(columns, row_sizes, pad_to_multiple_of)

    def counts(self, batch: dict[str, Any]) -> Counts:
        return self.lm.counts(batch)

    def preview(self, dataset: Dataset) -> str:
        return self.lm.preview(dataset)

    def build_model(self, model_cfg: ModelConfig) -> PreTrainedModel:
        return self.lm.build_model(model_cfg, self.config.generation)

    def forward(self, model: PreTrainedModel, batch: dict[str, Any]) -> Any:
        return self.lm.forward(model, batch)

    def loss(self, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
        return self.lm.loss(model, batch)

    def train_loss(self, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
        return self.lm.loss(model, batch, self.config.label_smoothing)
