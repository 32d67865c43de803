"""Every way to get a run's config, in one place: from command-line overrides over
`configs/train.yaml`, or from a run dir's saved `config.yaml` (resume, reproduce, eval,
predict). Overrides are read with Hydra's own parser, never split by hand.

A run dir's config is registered as the Hydra primary config RUN_DIR_PRIMARY
(`defaults: [sft_schema, _self_]` + the run's values + train.yaml's `hydra:` section), so the
whole `sft train` path (validation, .hydra/, train.log, failure handling) is reused and
overrides work as usual. A group override (`hardware=gpu`) replaces that section with the
group's option, exactly as when composing from train.yaml.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from sft.config.resolvers import register
from sft.config.schema import RunConfig
from sft.config.validate import describe, nearest, to_run_config, unknown_key
from sft.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # shipped inside the package
PRIMARY = "train"
RUN_DIR_PRIMARY = "sft_rerun"  # the ConfigStore name of the primary config built from a run dir
CONFIG_FILE = "config.yaml"  # a run dir's resolved RunConfig
HYDRA_FLAGS = ("--config-path", "-cp", "--config-dir", "-cd", "--config-name", "-cn")


# -- overrides ----------------------------------------------------------------------------
def _overrides(args: list[str]) -> list[str]:
    """The overrides among the arguments (not flags such as --multirun or their values)."""
    return [a for a in args if not a.startswith("-") and ("=" in a or a.startswith("~"))]


def parse(args: list[str]) -> list[Override]:
    """Hydra's own reading of `key=value`, `group=option`, `+key=`, `~key`, sweeps."""
    try:
        return OverridesParser.create().parse_overrides(_overrides(args))
    except OverrideParseException as err:
        raise ConfigError(f"cannot read the overrides: {str(err).splitlines()[0]}") from err


def text(override: Override) -> str:
    """The value as typed (`1e-4` stays `1e-4`)."""
    return override.input_line.split("=", 1)[1] if "=" in override.input_line else ""


def value(args: list[str], key: str) -> str | None:
    """The value of the last `key=value` among the overrides, as typed, or None."""
    found = [text(o) for o in parse(args) if o.key_or_group == key and not o.is_delete()]
    return found[-1] if found else None


def without(args: list[str], *keys: str) -> list[str]:
    dropped = {arg for arg, override in zip(_overrides(args), parse(args), strict=True)
               if override.key_or_group in keys}
    return [a for a in args if a not in dropped]


def params(args: list[str]) -> dict[str, str]:
    """key -> value as typed, Hydra's own keys left out (what a sweep report shows)."""
    return {o.key_or_group: text(o) for o in parse(args)
            if not o.is_delete() and not o.key_or_group.startswith("hydra")}


def _groups() -> set[str]:
    return {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def unknown_option(group: str, option: str, options: list[str]) -> str:
    listed = nearest(option, options) or f" (options: {', '.join(options)})"
    return f"unknown {group} option '{option}'{listed}"


def explain(err: BaseException) -> str:
    """One line for any composing error; a mistyped key, group or group option comes with the
    nearest names (Hydra's own advice to append it with `+` only adds a key the schema
    rejects)."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, option = err.missing_cfg_file.rpartition("/")
        return unknown_option(group, option, list(err.options))
    return unknown_key(err, _groups()) or describe(err)


# -- help ----------------------------------------------------------------------------------
def groups_help(width: int = 88) -> str:
    """Every config group with its options, the default first (train.yaml's defaults)."""
    chosen: dict[str, Any] = {}
    for entry in OmegaConf.load(CONFIG_DIR / f"{PRIMARY}.yaml").defaults:
        if isinstance(entry, DictConfig):
            (key, option), = entry.items()
            chosen[key.removeprefix("optional ")] = option
    lines = ["groups (group=option; the default is starred):"]
    for group in sorted(_groups()):
        options = [f"{o}*" if o == chosen.get(group) else o for o in _options(group)]
        lines += _wrapped(group, options, width)
    return "\n".join(lines)


def train_help(args: list[str], width: int = 88) -> str:
    """`sft train --help`: usage, groups and options, and every key of the config these
    overrides compose (task=qa shows the QA task's keys) with its value."""
    cfg = compose(_overrides(args))
    plain = OmegaConf.to_container(cfg)
    assert isinstance(plain, dict)
    lines = [TRAIN_USAGE.strip(), "", groups_help(width), "",
             "keys (section.key=value; the values these overrides give):"]
    top = {k: v for k, v in plain.items() if not isinstance(v, dict)}
    for section, node in [*((k, v) for k, v in plain.items() if k not in top), ("(top level)", top)]:
        lines += _wrapped(section, [f"{k}={_short(v)}" for k, v in _flat(node).items()
                                    if not k.startswith("_")], width)
    return "\n".join(lines)


TRAIN_USAGE = """
usage: sft train [group=option ...] [key=value ...] [--multirun] [--cfg job] [--hydra-help]
  sft train task=sentiment model=minilm optimizer.lr=3e-5 trainer.epochs=1
  sft train --multirun optimizer.lr=1e-5,3e-5 seed=1,2      (a sweep; Optuna: hparams_search=optuna)
  sft train resume=latest                                   (continue the newest run of task/model)
  sft train trainer.max_steps=0                             (evaluate the model as loaded, no training)
  sft train task=qa --help                                  (this help with the QA task's keys)
"""


def _short(value: Any, limit: int = 48) -> str:
    """A value as an override spells it: null, true, [a,b]."""
    if isinstance(value, list):
        text = "[" + ",".join(_short(v, limit) for v in value) + "]"
    elif value is None or isinstance(value, bool):
        text = "null" if value is None else str(value).lower()
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wrapped(name: str, items: list[str], width: int) -> list[str]:
    """`  name     item item ...` wrapped under itself."""
    return textwrap.wrap(" ".join(items), width, initial_indent=f"  {name:<15}",
                         subsequent_indent=" " * 17, break_on_hyphens=False)


def check_args(args: list[str]) -> None:
    """What Hydra would get wrong silently or with a traceback, refused in one line before it
    runs: an option of an `optional` group (experiment, hparams_search) that does not exist
    (Hydra skips it), and a run dir that is an existing file (Hydra's mkdir fails)."""
    # with a config dir or search path of the user's, a group may have more options than ours
    own = not any(a.split("=")[0] in HYDRA_FLAGS for a in args) and not value(args, "hydra.searchpath")
    groups = _groups() if own else set()
    for override in parse(args):
        group = override.key_or_group
        if group not in groups or override.is_delete():
            continue
        if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            continue  # glob(...) picks among the options that exist
        chosen = list(override.sweep_string_iterator()) if override.is_sweep_override() else [
            text(override)]
        for option in chosen:
            if option not in {"", "null", *_options(group)}:
                raise ConfigError(unknown_option(group, option, _options(group)))
    for key in ("run_dir", "hydra.run.dir"):
        path = value(args, key)
        if path and "${" not in path:
            where = Path(path).expanduser()
            file = next((p for p in (where, *where.parents) if p.exists() and not p.is_dir()), None)
            if file is not None:
                raise ConfigError(f"{key}={path}: {file} is a file, not a folder; name a new "
                                  "or existing folder for the run")


# -- composing -----------------------------------------------------------------------------
def compose(overrides: list[str], primary: str = PRIMARY) -> DictConfig:
    """The composed config of `sft train <overrides>` (or of a registered run dir)."""
    register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(primary, overrides=overrides)


def compose_run(overrides: list[str]) -> RunConfig:
    return to_run_config(compose(overrides))


def check_run_dir(path: Path) -> Path:
    if not (path / CONFIG_FILE).is_file():
        raise ConfigError(f"{path} is not a run dir (no {CONFIG_FILE}); pass the folder of an "
                          "`sft train` run")
    return path


def register_run_dir(run_dir: Path, overrides: list[str]) -> list[str]:
    """Register the run's config as the primary config RUN_DIR_PRIMARY; returns the overrides
    to compose it with (group selections turned into `+group=option`)."""
    saved = OmegaConf.to_container(OmegaConf.load(check_run_dir(run_dir) / CONFIG_FILE))
    assert isinstance(saved, dict)
    _upgrade(saved)
    groups, hydra_args = _groups(), []
    for override, arg in zip(parse(overrides), _overrides(overrides), strict=True):
        if override.key_or_group in groups and not override.is_delete():
            saved.pop(override.key_or_group, None)  # the option replaces the section
            arg = "+" + arg.lstrip("+")
        hydra_args.append(arg)
    hydra = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{PRIMARY}.yaml").hydra)
    node = {"defaults": ["sft_schema", "_self_"], **saved, "resume": None, "hydra": hydra}
    ConfigStore.instance().store(name=RUN_DIR_PRIMARY, node=node)
    return hydra_args


def _upgrade(saved: dict[str, Any]) -> None:
    """Run dirs written by sft 0.1 name the schedules' old module and task.greater_is_better
    (the direction now comes from the metric); read them as today's keys."""
    scheduler = saved.get("scheduler") or {}
    if str(scheduler.get("_target_", "")).startswith("sft.optim."):
        scheduler["_target_"] = scheduler["_target_"].replace("sft.optim.", "sft.train.optim.", 1)
    (saved.get("task") or {}).pop("greater_is_better", None)


def load_run(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A finished (or interrupted) run's RunConfig, with overrides on top."""
    args = register_run_dir(Path(run_dir), list(overrides or []))
    return to_run_config(compose(args, RUN_DIR_PRIMARY))


def latest_run(args: list[str]) -> Path:
    """The newest run of the task/model these overrides select, under runs/<task>/<model>/:
    the one written to last (a crashed run is the newest until something else runs)."""
    cfg = compose(without(args, "resume", "run_dir"))
    root = Path("runs") / cfg.task.name / cfg.model.name
    runs = [p for p in root.glob("*") if (p / CONFIG_FILE).is_file()] if root.is_dir() else []
    if not runs:
        raise ConfigError(f"resume=latest: no run under {root}/; pass resume=RUN_DIR")

    def last_write(run: Path) -> float:
        return max(p.stat().st_mtime for p in [run, *run.iterdir(), *run.glob("checkpoints/*")])

    return max(runs, key=last_write)


def resume_args(args: list[str], target: str) -> list[str]:
    """Overrides that continue the run `target` (a run dir or `latest`) in its own folder,
    from its config.yaml plus `args`; the run's original .hydra/ record is kept."""
    if any(a.split("=")[0] in HYDRA_FLAGS for a in args) or "-m" in args or "--multirun" in args:
        raise ConfigError("resume= continues one run from its own config.yaml; drop "
                          "--multirun/--config-path/--config-name")
    run_dir = latest_run(args) if target == "latest" else Path(target)
    rest = register_run_dir(run_dir, without(args, "resume", "run_dir"))
    return [*rest, f"run_dir={run_dir}", f"resume={run_dir}", "hydra.output_subdir=null"]


def native_args(args: list[str]) -> list[str]:
    """`sft train --config-path RUN_DIR/.hydra --config-name config`: that config has no
    `hydra:` section, so give it our run dir (a new one unless run_dir= is given; never the
    original's, which its config may name) and train.log. Checks the arguments first."""
    check_args(args)
    if not any(a.split("=")[0] in HYDRA_FLAGS[:2] for a in args):
        return args
    extra = []
    if value(args, "hydra.run.dir") is None:
        default = RunConfig.__dataclass_fields__["run_dir"].default
        pattern = "${run_dir}" if value(args, "run_dir") else default
        extra.append(f"hydra.run.dir={pattern}")
    if value(args, "hydra.job_logging.handlers.file.filename") is None:
        extra.append("hydra.job_logging.handlers.file.filename=${hydra.runtime.output_dir}/train.log")
    return [*args, *extra]


def config_changes(run: RunConfig, run_dir: Path) -> list[str]:
    """`key: saved -> now` for every setting that differs from the run's config.yaml."""
    saved = _flat(OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE)))
    now = _flat(dataclasses.asdict(run))
    return [f"{k}: {saved.get(k)} -> {now.get(k)}" for k in sorted(saved.keys() | now.keys())
            if k not in {"run_dir", "resume"} and saved.get(k) != now.get(k)]


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items()
                for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}
