"""Instruction / chat tuning of causal LMs: the loss on what the assistant says.

Records (alpaca `instruction`/`input`/`output`, or chat `messages`) are rendered through the
chat template (the tokenizer's own or task.chat_template, which is then saved with every
checkpoint and best/), and labels come from the rendered assistant spans (sft.tasks.chat).
Labels are stored already shifted (labels[i] is the target at position i), so documents can
be packed side by side without any target crossing into another document.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from sft.config.schema import DataConfig, ModelConfig
from sft.config.tasks import GenerationConfig, InstructionConfig
from sft.data.collate import pad_columns
from sft.data.packing import pack_columns
from sft.errors import DataError
from sft.models.loading import load_model
from sft.tasks.base import IGNORE_INDEX, Counts, Evaluator, Task, cross_entropy_sum
from sft.tasks.chat import (
    detect_format,
    prompt_text,
    render,
    resolve_template,
    to_messages,
    tokenize_with_labels,
)
from sft.tasks.generation import generate_texts, stop_token_ids

PREVIEW_RECORDS = 3


class InstructionEvaluator(Evaluator):
    """Per-token mean loss over the assistant tokens of the split, and its perplexity."""

    def __init__(self, task: InstructionTask) -> None:
        super().__init__()
        self.task = task

    def update(self, model: PreTrainedModel, batch: dict[str, Any]) -> None:
        self.add_loss(self.task.loss(model, batch), self.task.counts(batch).targets)

    def metrics(self) -> dict[str, float]:
        mean = self.loss_sum / max(self.loss_targets, 1)
        return {"perplexity": math.exp(min(mean, 50.0))}


class InstructionTask(Task):
    config_class = InstructionConfig
    load_best = 'pipeline("text-generation", model="best")'
    model_inputs = ("input_ids", "attention_mask", "position_ids")
    drop_reason = "no response token left within data.max_length"
    eval_batch_tokens = 4096  # x 49k vocabulary (SmolLM2): 0.8 GB of fp32 logits per batch
    config: InstructionConfig

    def __init__(self, config: InstructionConfig, tokenizer: PreTrainedTokenizerBase,
                 data: DataConfig) -> None:
        super().__init__(config, tokenizer, data)
        # the template used is the tokenizer's from now on: saved with best/ and checkpoints,
        # and part of the feature cache key
        tokenizer.chat_template = resolve_template(tokenizer, config.chat_template)
        if tokenizer.pad_token_id is None:  # GPT-2 and friends: padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token
        self.format = config.format
        self.head_on_targets: bool | None = None  # None: not checked yet (see loss)
        self.sample_dialogs: list[list[dict[str, str]]] = []

    # -- data --------------------------------------------------------------------------
    def _messages(self, record: dict[str, Any], where: str) -> list[dict[str, str]]:
        return to_messages(record, self.format, self.config.columns(), self.config.system_prompt,
                           where=where)

    def prepare_split(self, dataset: Dataset, split: str) -> Dataset:
        if self.format == "auto":
            self.format = detect_format(dataset.column_names, self.config.columns())
        dialogs = [self._messages(record, f"{split} record {i}") for i, record in enumerate(dataset)]
        if split == "validation":
            self.sample_dialogs = dialogs[: self.config.num_samples]
        return dataset

    def featurize(self, rows: dict[str, list]) -> dict[str, list]:
        features: dict[str, list] = {"input_ids": [], "labels": []}
        for values in zip(*rows.values(), strict=True):
            messages = self._messages(dict(zip(rows, values, strict=True)), "record")
            text, spans = render(self.tokenizer, self.tokenizer.chat_template, messages)
            tokens = tokenize_with_labels(self.tokenizer, text, spans, self.data.max_length,
                                          self.config.train_on_prompt)
            if tokens is not None:  # dropped (and counted by the featurizer) otherwise
                features["input_ids"].append(tokens[0])
                features["labels"].append(tokens[1])
        return features

    def collate(self, columns: dict[str, list], pad_to_multiple_of: int | None) -> dict[str, Any]:
        columns = {**columns, "attention_mask": [[1] * len(ids) for ids in columns["input_ids"]]}
        pad = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return pad_columns(columns, pad, pad_to_multiple_of)

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

    # -- model -------------------------------------------------------------------------
    def build_model(self, model_cfg: ModelConfig) -> PreTrainedModel:
        model = load_model(AutoModelForCausalLM, model_cfg)
        # best/ generates as sft does: same stop tokens and length, no 20-token default
        gen = model.generation_config
        gen.eos_token_id = stop_token_ids(self.tokenizer)
        gen.pad_token_id = self.tokenizer.pad_token_id
        gen.max_new_tokens = self.config.generation.max_new_tokens
        gen.max_length = None
        return model

    def forward(self, model: PreTrainedModel, batch: dict[str, Any], **kwargs: Any) -> Any:
        # no KV cache while training: with a cache, transformers ignores packed position_ids
        # and documents attend to each other
        return model(**{k: v for k, v in batch.items() if k in self.model_inputs}, use_cache=False,
                     **kwargs)

    def loss_sum(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        return cross_entropy_sum(outputs.logits, batch["labels"])

    def loss(self, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
        """The LM head and its cross-entropy run on the target positions only: on alpaca
        about half the tokens are prompt, and the head (tokens x 49k vocabulary for SmolLM2)
        is the biggest matmul of a small LM (a step on CPU: 12.8 s -> 8.5 s). The model's
        own head runs on one position, so the last hidden state is checked against it once
        (a model that scales or caps its logits keeps the full path)."""
        if self.head_on_targets is False:
            return super().loss(model, batch)
        outputs = self.forward(model, batch, output_hidden_states=True, logits_to_keep=1)
        hidden = outputs.hidden_states[-1]
        head = getattr(model, "module", model).get_output_embeddings()  # DDP: the module
        if self.head_on_targets is None:
            with torch.no_grad():
                self.head_on_targets = torch.allclose(
                    head(hidden[:, -1:]).float(), outputs.logits.float(), atol=1e-3, rtol=1e-3)
            if not self.head_on_targets:
                return super().loss(model, batch)
        keep = batch["labels"] != IGNORE_INDEX
        return cross_entropy_sum(head(hidden[keep]), batch["labels"][keep])

    def evaluator(self) -> InstructionEvaluator:
        return InstructionEvaluator(self)

    # -- generation --------------------------------------------------------------------
    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The rendered conversation up to the model's turn (generation prompt appended)."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def samples(self, model: PreTrainedModel) -> list[dict[str, Any]]:
        """Greedy generations for the first task.num_samples validation prompts: each
        conversation up to its last assistant turn, which is the reference."""
        if not self.sample_dialogs:
            return []
        prompts = [prompt_text(self.tokenizer, self.tokenizer.chat_template, d)
                   for d in self.sample_dialogs]
        results = generate_texts(model, self.tokenizer, prompts, self.config.generation)
        samples = []
        for dialog, result in zip(self.sample_dialogs, results, strict=True):
            last = max(i for i, m in enumerate(dialog) if m["role"] == "assistant")
            samples.append({"prompt": dialog[last - 1]["content"],
                            "reference": dialog[last]["content"],
                            "generation": result["generation"]})
        return samples

    def prediction_messages(self, record: dict[str, Any], where: str) -> list[dict[str, str]]:
        """The conversation to continue, read as training reads it (sft.tasks.chat) but with
        no response needed: `messages` (a trailing assistant turn is dropped), alpaca fields,
        or a plain `prompt` / `text` taken as the instruction."""
        c = self.config
        if isinstance(record.get(c.messages_column), list):
            fmt = "messages"
        elif c.instruction_column in record:
            fmt = "alpaca"
        elif isinstance(record.get("prompt", record.get("text")), str):
            fmt, record = "alpaca", {c.instruction_column: record.get("prompt", record.get("text"))}
        else:
            raise DataError(f"{where} has none of '{c.messages_column}', '{c.instruction_column}', "
                            "'prompt' or 'text'; give each record one of them")
        messages = to_messages(record, fmt, c.columns(), c.system_prompt, where=where,
                               require_assistant=False)
        return messages[:-1] if messages[-1]["role"] == "assistant" else messages

    def predict(self, model: PreTrainedModel, records: list[dict[str, Any]], batch_size: int,
                generation: GenerationConfig | None = None) -> list[dict[str, Any]]:
        prompts = [self.prompt(self.prediction_messages(r, f"record {i}"))
                   for i, r in enumerate(records)]
        return generate_texts(model, self.tokenizer, prompts, generation or self.config.generation,
                              batch_size)
