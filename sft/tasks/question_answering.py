"""Extractive question answering (SQuAD v1.1): sliding windows over long contexts,
n-best span post-processing, and the official SQuAD EM/F1.

Evaluation streams: features arrive in dataset order (all windows of an example are
contiguous, window 0 first), so each example is scored as soon as its windows are seen
and only its best span is kept, never the logits of the eval set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForQuestionAnswering, PreTrainedModel

from sft.config.schema import DataConfig, ModelConfig
from sft.config.tasks import QuestionAnsweringConfig
from sft.data.collate import batched, pad_columns, to_device
from sft.errors import ConfigError, DataError
from sft.metrics.squad import SquadScorer
from sft.models.loading import load_model
from sft.tasks.base import Evaluator, Task, cross_entropy_sum
from sft.tasks.spans import Span, best_span, higher, window_positions
from sft.tasks.squad import read_squad, split_articles

PASS_THROUGH = ("window", "context_start", "offsets", "context", "references")


class QuestionAnsweringEvaluator(Evaluator):
    def __init__(self, task: QuestionAnsweringTask) -> None:
        super().__init__()
        self.task = task
        self.scorer = SquadScorer()
        self.context: str | None = None
        self.references: list[str] = []
        self.best: Span | None = None

    def _finish(self) -> None:
        """Score the example whose windows are all seen."""
        if self.context is not None:
            answer = self.context[self.best[1] : self.best[2]] if self.best else ""
            self.scorer.add(answer, self.references)
        self.context, self.best = None, None

    def update(self, model: PreTrainedModel, batch: dict[str, Any]) -> None:
        out = self.task.forward(model, batch)
        self.add_loss(self.task.loss_sum(out, batch), len(batch["window"]))
        starts, ends = out.start_logits.float().cpu(), out.end_logits.float().cpu()
        c = self.task.config
        for i, window in enumerate(batch["window"]):
            if window == 0:
                self._finish()
                self.context, self.references = batch["context"][i], batch["references"][i]
            span = best_span(starts[i], ends[i], batch["context_start"][i], batch["offsets"][i],
                             c.n_best, c.max_answer_length)
            self.best = higher(span, self.best)

    def state(self) -> dict[str, Any]:
        self._finish()  # a shard ends with a whole example (see Task.eval_group_column)
        return {**super().state(), "squad": self.scorer.sums()}

    def merge(self, states: list[dict[str, Any]]) -> None:
        super().merge([{k: v for k, v in s.items() if k != "squad"} for s in states])
        self.scorer = SquadScorer.merged([s["squad"] for s in states])

    def metrics(self) -> dict[str, float]:
        self._finish()
        return self.scorer.result()


class QuestionAnsweringTask(Task):
    config_class = QuestionAnsweringConfig
    # transformers 5 has no pipeline("question-answering")
    load_best = 'AutoModelForQuestionAnswering.from_pretrained("best")'
    eval_group_column = "window"  # an example's windows are scored together
    config: QuestionAnsweringConfig

    def __init__(self, config: QuestionAnsweringConfig, tokenizer: Any, data: DataConfig,
                 model: ModelConfig | None = None) -> None:
        super().__init__(config, tokenizer, data, model)
        if config.doc_stride >= data.max_length // 2:
            raise ConfigError(f"task.doc_stride={config.doc_stride} must be below half of "
                              f"data.max_length={data.max_length} (e.g. 384 and 128)")

    def read_file(self, path: Path, split: str) -> Dataset | None:
        if path.suffix.lower() != ".json":
            return None  # jsonl/csv/parquet with flat columns: the generic reader
        articles = read_squad(path)
        span = self.config.article_split.get(split)
        rows = (split_articles(articles, span, self.config.article_seed) if span
                else [row for article in articles for row in article["rows"]])
        return Dataset.from_list(rows)

    def prepare_split(self, dataset: Dataset, split: str) -> Dataset:
        c = self.config
        for column in (c.question_column, c.context_column, c.answers_column):
            if column not in dataset.column_names:
                raise DataError(f"column '{column}' not found in the {split} split (columns: "
                                f"{', '.join(dataset.column_names)}); set task.question_column "
                                "/ task.context_column / task.answers_column")
        for answers in dataset[c.answers_column][:1]:
            if not isinstance(answers, dict) or not {"text", "answer_start"} <= set(answers):
                raise DataError(f"task.answers_column '{c.answers_column}' must hold "
                                '{"text": [...], "answer_start": [...]} per row')
        return dataset

    def windows(self, questions: list[str], contexts: list[str],
                answers: list[dict[str, list]] | None) -> dict[str, list]:
        """Features of each (question, context): one per window of max_length tokens,
        consecutive windows overlapping by doc_stride tokens."""
        enc = self.tokenizer([q.lstrip() for q in questions], contexts,
                             truncation="only_second", max_length=self.data.max_length,
                             stride=self.config.doc_stride, return_overflowing_tokens=True,
                             return_offsets_mapping=True)
        examples = enc.pop("overflow_to_sample_mapping")
        offsets = enc.pop("offset_mapping")
        out: dict[str, list] = {**enc, "example": examples}
        for key in ("start_positions", "end_positions", *PASS_THROUGH):
            out[key] = []
        for i, ex in enumerate(examples):
            first = i == 0 or examples[i - 1] != ex
            gold = answers[ex] if answers else None
            has_answer = bool(gold and gold["text"])
            w = window_positions(offsets[i], enc.sequence_ids(i),
                                 gold["answer_start"][0] if has_answer else None,
                                 gold["text"][0] if has_answer else None)
            for key, value in w.items():
                out[key].append(value)
            out["window"].append(0 if first else out["window"][-1] + 1)
            # the context and references ride on an example's first window only
            out["context"].append(contexts[ex] if first else "")
            out["references"].append(list(gold["text"]) if first and gold else [])
        return out

    def featurize(self, rows: dict[str, list]) -> dict[str, list]:
        c = self.config
        out = self.windows(rows[c.question_column], rows[c.context_column], rows[c.answers_column])
        out.pop("example")
        return out

    def collate(self, columns: dict[str, list], pad_to_multiple_of: int | None) -> dict[str, Any]:
        pad = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        batch: dict[str, Any] = pad_columns(columns, pad, pad_to_multiple_of)
        for key in ("start_positions", "end_positions"):
            if key in columns:
                batch[key] = torch.as_tensor(columns[key], dtype=torch.long)
        batch.update({key: columns[key] for key in PASS_THROUGH if key in columns})
        return batch

    def loss_sum(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        """As transformers' QA heads, the mean of the start and end cross-entropies, but over
        real tokens only: padding gets no probability, so the loss of a window does not depend
        on the batch it was padded in (transformers' heads let padding take some)."""
        padding = batch["attention_mask"] == 0
        return sum(cross_entropy_sum(logits.float().masked_fill(padding, float("-inf")), batch[key])
                   for logits, key in ((outputs.start_logits, "start_positions"),
                                       (outputs.end_logits, "end_positions"))) / 2

    def build_model(self, model_cfg: ModelConfig) -> PreTrainedModel:
        return load_model(AutoModelForQuestionAnswering, model_cfg)

    def evaluator(self) -> QuestionAnsweringEvaluator:
        return QuestionAnsweringEvaluator(self)

    @torch.inference_mode()
    def predict(self, model: PreTrainedModel, records: list[dict[str, Any]],
                batch_size: int) -> list[dict[str, Any]]:
        """The best answer span of each record's question in its context: text, start/end
        characters, and score = P(start) * P(end) within the window that holds it."""
        c = self.config
        for column in (c.question_column, c.context_column):
            if any(not isinstance(r.get(column), str) for r in records):
                raise DataError(f"prediction input needs a '{column}' string in every record")
        results: list[dict[str, Any]] = []
        for chunk in batched(records, batch_size):
            contexts = [r[c.context_column] for r in chunk]
            feats = self.windows([r[c.question_column] for r in chunk], contexts, None)
            best: list[Span | None] = [None] * len(chunk)
            for rows in batched(list(range(len(feats["example"]))), batch_size):
                batch = self.collate({k: [v[i] for i in rows] for k, v in feats.items()}, None)
                out = self.forward(model, to_device(batch, model.device))
                for j, i in enumerate(rows):
                    start, n = feats["context_start"][i], len(feats["offsets"][i])
                    logp = [x[j, start : start + n].float().log_softmax(-1).cpu()
                            for x in (out.start_logits, out.end_logits)]
                    span = best_span(logp[0], logp[1], 0, feats["offsets"][i], c.n_best,
                                     c.max_answer_length)
                    ex = feats["example"][i]
                    best[ex] = higher(span, best[ex])
            for context, span in zip(contexts, best, strict=True):
                score, s, e = span if span else (float("-inf"), 0, 0)
                results.append({"answer": context[s:e], "score": float(torch.tensor(score).exp()),
                                "start": s, "end": e})
        return results
