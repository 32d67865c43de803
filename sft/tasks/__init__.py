"""Task plug-ins, keyed by `task.type` (their config schemas: sft.config.tasks)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from sft.config.schema import DataConfig, ModelConfig, TaskConfig
from sft.config.tasks import task_schema
from sft.tasks.base import Task
from sft.tasks.classification import ClassificationTask
from sft.tasks.instruction import InstructionTask
from sft.tasks.question_answering import QuestionAnsweringTask
from sft.tasks.text2text import SummarizationTask, TranslationTask
from sft.tasks.token_classification import TokenClassificationTask

# keyed by the `type` of each plug-in's config schema (sft.config.tasks.TASK_SCHEMAS)
TASKS: dict[str, type[Task]] = {
    plugin.config_class.type: plugin for plugin in (ClassificationTask, TokenClassificationTask,
                                                    QuestionAnsweringTask, InstructionTask,
                                                    SummarizationTask, TranslationTask)
}


def task_class(task_type: str | None) -> type[Task]:
    return TASKS[task_schema(task_type).type]  # task_schema names an unknown type


def build_task(config: TaskConfig, tokenizer: PreTrainedTokenizerBase, data: DataConfig,
               model: ModelConfig | None = None) -> Task:
    """The task's plug-in; generative families read `model` to pick the model kind."""
    return task_class(config.type)(config, tokenizer, data, model)
