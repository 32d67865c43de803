"""Task plug-ins, keyed by `task.type` (their config schemas: sft.config.tasks)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from sft.config.schema import DataConfig, TaskConfig
from sft.errors import ConfigError
from sft.tasks.base import Task
from sft.tasks.classification import ClassificationTask
from sft.tasks.question_answering import QuestionAnsweringTask
from sft.tasks.token_classification import TokenClassificationTask

TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "token_classification": TokenClassificationTask,
    "qa": QuestionAnsweringTask,
}


def task_class(task_type: str | None) -> type[Task]:
    if task_type not in TASKS:
        raise ConfigError(f"unknown task.type '{task_type}'; known types: {', '.join(TASKS)}")
    return TASKS[task_type]


def build_task(config: TaskConfig, tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> Task:
    return task_class(config.type)(config, tokenizer, data)
