"""A composed config (or a saved config.yaml) -> a frozen, checked RunConfig; one-line
messages for OmegaConf/Hydra errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from sft.config.resolvers import register, writable_schema
from sft.config.schema import BATCHING, STRATEGIES, RunConfig
from sft.config.tasks import task_schema
from sft.errors import ConfigError


def nearest(word: str, names: Iterable[str]) -> str:
    """`; did you mean a?` for the names closest to a mistyped one ('' when none is close):
    whole dotted keys first, then keys whose last part is close (`lr` -> optimizer.lr)."""
    names = {n for n in names if not word.startswith(n + ".")}  # not the word's own section
    close = _closest(word, {n: n for n in names}, 0.75)
    if not close:
        close = _closest(word.rsplit(".", 1)[-1], {n: n.rsplit(".", 1)[-1] for n in names}, 0.8)
    return f"; did you mean {' or '.join(close[:3])}?" if close else ""


def _closest(word: str, names: dict[str, str], cutoff: float) -> list[str]:
    """The names whose text (`names[name]`) is within a hair of the best match to `word`."""
    score = {n: difflib.SequenceMatcher(None, word, text).ratio() for n, text in names.items()}
    best = max(score.values(), default=0.0)
    return sorted((n for n, r in score.items() if r >= max(cutoff, best - 0.02)),
                  key=lambda n: (-score[n], n))


def config_keys(node: Any, prefix: str = "") -> list[str]:
    """Every section and key of a config node, dotted (`trainer`, `trainer.batch_size`, ...),
    Hydra's own `hydra` section left out."""
    if not isinstance(node, DictConfig):
        return []
    keys = []
    for key in node.keys():
        if prefix or key != "hydra":
            keys += [f"{prefix}{key}", *config_keys(node._get_node(key), f"{prefix}{key}.")]
    return keys


def unknown_key(err: BaseException, names: Iterable[str] = (), prefix: str = "") -> str | None:
    """`unknown key 'trainer.bach_size'; did you mean trainer.batch_size?` when `err` (or its
    cause) is OmegaConf's unknown-key error, with the nearest keys of the config it was set
    in (plus `names`); None for any other error. `prefix`: where that config sits."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        cause = cause.__cause__
    parent = getattr(cause, "parent_node", None)
    if cause is None or parent is None or " not in " not in str(cause):
        return None
    key = prefix + str(getattr(cause, "full_key", "") or "")
    hint = nearest(key, [*(prefix + k for k in config_keys(parent._get_root())), *names])
    if "not in struct" in str(cause):  # a free dict (optimizer, scheduler) takes new keys
        section = key.rsplit(".", 1)[0]
        hint += f" (a new {section} argument is added with +{key}=...)"
    return f"unknown key '{key}'{hint or '; `sft train --cfg job` prints every key'}"


def describe(err: BaseException) -> str:
    """One line for an OmegaConf/Hydra error: the message and the offending key."""
    cause = err
    while cause.__cause__ is not None and not isinstance(cause, ConfigError):
        cause = cause.__cause__
    if isinstance(cause, ConfigError):
        return str(cause)
    if message := unknown_key(err):
        return message
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
        merged = OmegaConf.merge(writable_schema(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        if message := unknown_key(err, prefix=f"{where}." if where else ""):
            raise ConfigError(message) from err
        key = ".".join(k for k in (where, getattr(err, "full_key", None) or "") if k)
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"config error at '{key or where}': {first}; fix or remove that key "
                          "(`sft train --cfg job` prints every key)") from err


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def to_run_config(cfg: DictConfig | dict) -> RunConfig:
    """Validate a composed config (or a saved config.yaml) into a frozen RunConfig."""
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
    task = _validated(task_schema(task_node.get("type")), task_node, "task")
    run: RunConfig = _validated(RunConfig, plain, "")
    run = RunConfig(**{**run.__dict__, "task": task})
    _check_values(run)
    return run


def _check_values(run: RunConfig) -> None:
    t, d, h, m = run.trainer, run.data, run.hardware, run.model
    _check(t.batch_size >= 1, f"trainer.batch_size must be >= 1, got {t.batch_size}")
    _check(t.eval_batch_size >= 1, f"trainer.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    _check(t.grad_accum >= 1, f"trainer.grad_accum must be >= 1, got {t.grad_accum}")
    _check(t.batching in BATCHING,
           f"trainer.batching must be one of {', '.join(BATCHING)}, got '{t.batching}'")
    _check(t.batching in run.task.BATCHINGS,
           f"trainer.batching={t.batching} is not supported by task type '{run.task.type}' "
           f"(it takes {', '.join(run.task.BATCHINGS)})")
    _check(t.batch_tokens is None or t.batch_tokens >= d.max_length,
           f"trainer.batch_tokens must be >= data.max_length ({d.max_length}) or null, "
           f"got {t.batch_tokens}")
    _check(t.max_steps is None or t.max_steps >= -1,
           f"trainer.max_steps must be >= 0 (0: evaluate only), or -1/null to train for "
           f"trainer.epochs; got {t.max_steps}")
    _check(t.epochs >= 1 or t.fixed_steps() is not None,
           "set trainer.epochs >= 1 or trainer.max_steps >= 0")
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
    _check((d.folds is None) == (d.fold is None), "set data.folds and data.fold together")
    _check(d.folds is None or (d.folds >= 2 and 0 <= d.fold < d.folds),  # type: ignore[operator]
           f"data.fold must be in 0..data.folds-1 with data.folds >= 2, got fold {d.fold} of "
           f"{d.folds}")
    _check(h.precision in {"auto", "fp32", "bf16", "fp16"},
           f"hardware.precision must be auto, fp32, bf16 or fp16, got '{h.precision}'")
    _check(h.device == "auto" or h.device == "cpu" or h.device.startswith("cuda"),
           f"hardware.device must be auto, cpu or cuda[:N], got '{h.device}'")
    _check(h.num_threads is None or h.num_threads >= 1,
           f"hardware.num_threads must be >= 1 or null, got {h.num_threads}")
    _check(m.init in {"pretrained", "random"},
           f"model.init must be 'pretrained' or 'random', got '{m.init}'")
    _check(m.architecture is None or m.init == "random",
           f"model.architecture={m.architecture} builds a new model; it needs model.init=random")
    _check(m.freeze_layers >= 0, f"model.freeze_layers must be >= 0, got {m.freeze_layers}")
    _check_adapter(run)
    _check_parallel(run)
    lg = run.logger
    _check(lg.type in {"none", "tensorboard", "mlflow", "wandb"},
           f"logger.type must be none, tensorboard, mlflow or wandb, got '{lg.type}'")
    _check(lg.mode in {"offline", "online", "disabled"},
           f"logger.mode must be offline, online or disabled, got '{lg.mode}'")
    for group, node in (("optimizer", run.optimizer), ("scheduler", run.scheduler)):
        _check("_target_" in node, f"{group} has no _target_; choose one with {group}=<name>")
    lr = run.optimizer.get("lr")
    _check(isinstance(lr, (int, float)) and lr > 0, f"optimizer.lr must be a positive number, got {lr}")
    for key in ("l1", "l2"):  # loss penalties (sft.train.optim.Penalty); absent means 0
        value = run.optimizer.get(key) or 0
        _check(isinstance(value, (int, float)) and value >= 0,
               f"optimizer.{key} must be a number >= 0 (0: off), got {value}")
    run.task.validate()
    metrics = run.task.metrics()
    for key, value in (("task.metric", run.task.metric), ("trainer.metric", run.metric)):
        _check(value in metrics, f"{key} '{value}' is not computed by task '{run.task.name}' "
                                 f"(available: {', '.join(sorted(metrics))})")


def _check_parallel(run: RunConfig) -> None:
    p = run.parallel
    _check(p.strategy in STRATEGIES,
           f"parallel.strategy must be one of {', '.join(STRATEGIES)}, got '{p.strategy}'")
    _check(p.nproc_per_node is None or p.nproc_per_node >= 1,
           f"parallel.nproc_per_node must be >= 1 or null, got {p.nproc_per_node}")
    _check(p.strategy != "none" or (p.nproc_per_node or 1) == 1,
           f"parallel.nproc_per_node={p.nproc_per_node} starts several processes; choose how "
           "they share the model with parallel=ddp or parallel=fsdp")
    _check(p.shutdown_timeout_s >= 1,
           f"parallel.shutdown_timeout_s must be >= 1, got {p.shutdown_timeout_s}")
    if p.strategy == "fsdp":
        _check(not (run.optimizer.get("l1") or run.optimizer.get("l2")),
               "optimizer.l1/l2 penalties are not supported with parallel=fsdp (the parameters "
               "are sharded); use optimizer.weight_decay")
        _check(run.adapter.type == "none",
               "adapter=lora with parallel=fsdp is not supported yet; use parallel=ddp (the "
               "base is frozen, so each replica holds little more than the model)")


def _check_adapter(run: RunConfig) -> None:
    a, m = run.adapter, run.model
    _check(a.type in {"none", "lora"}, f"adapter.type must be none or lora, got '{a.type}'")
    _check(m.quantization in {None, "nf4"},
           f"model.quantization must be nf4 or null, got '{m.quantization}'")
    _check(m.quantization is None or a.type == "lora",
           "a 4-bit base (model.quantization=nf4) trains only through an adapter; use adapter=qlora")
    if a.type == "none":
        return
    _check(a.r >= 1, f"adapter.r must be >= 1, got {a.r}")
    _check(a.alpha > 0, f"adapter.alpha must be > 0, got {a.alpha}")
    _check(0 <= a.dropout < 1, f"adapter.dropout must be in [0, 1), got {a.dropout}")
    targets = a.target_modules
    _check(isinstance(targets, str) and targets != "" or isinstance(targets, list) and targets
           and all(isinstance(t, str) and t for t in targets),
           "adapter.target_modules must be all-linear, a list of module names or a regex, "
           f"got {targets!r}")
