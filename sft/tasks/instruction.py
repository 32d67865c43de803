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

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.config.schema import DataConfig, ModelConfig
from sft.config.tasks import GenerationConfig, InstructionConfig
from sft.errors import DataError
from sft.tasks.base import Evaluator
from sft.tasks.chat import detect_format, prompt_text, to_messages
from sft.tasks.generation import generate_texts
from sft.tasks.lm import CausalLM, LMTask


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


class InstructionTask(LMTask):
    config_class = InstructionConfig
    load_best = 'pipeline("text-generation", model="best")'
    drop_reason = "no response token left within data.max_length"
    config: InstructionConfig
    lm: CausalLM

    def __init__(self, config: InstructionConfig, tokenizer: PreTrainedTokenizerBase,
                 data: DataConfig, model: ModelConfig | None = None) -> None:
        super().__init__(config, tokenizer, data, CausalLM(tokenizer, config.chat_template))
        self.format = config.format
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
            tokens = self.lm.encode(messages, self.data.max_length, self.config.train_on_prompt)
            if tokens is not None:  # dropped (and counted by the featurizer) otherwise
                features["input_ids"].append(tokens[0])
                features["labels"].append(tokens[1])
        return features

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
