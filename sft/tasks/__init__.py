"""Task plug-ins, keyed by `task.type`."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from sft.config import DataConfig
from sft.errors import ConfigError
from sft.tasks.base import Task, TaskConfig
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


def task_config_class(task_type: str | None) -> type[TaskConfig]:
    return task_class(task_type).config_class


def build_task(config: TaskConfig, tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> Task:
    return task_class(config.type)(config, tokenizer, data)
