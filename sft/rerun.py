"""Launch `sft train` again from a run directory: resume it, or reproduce it.

Both start from the run's resolved `config.yaml`, registered as a Hydra primary config
(`defaults: [sft_schema, _self_]` + the run's values + train.yaml's `hydra:` section), so
the whole `sft train` path (validation, .hydra/, train.log, failure handling) is reused and
command-line overrides work as usual. A group override (`hardware=gpu`) replaces that
section with the group's option, exactly as when composing from train.yaml.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from sft.config import CONFIG_DIR, RunConfig
from sft.errors import ConfigError
from sft.rundir import CONFIG_FILE

PRIMARY = "sft_rerun"  # the ConfigStore name of the primary config built from a run dir
HYDRA_FLAGS = ("--config-path", "-cp", "--config-dir", "-cd", "--config-name", "-cn")


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def find_arg(args: list[str], key: str) -> str | None:
    """The value of the last `key=value` among the overrides, or None."""
    values = [a.split("=", 1)[1] for a in args if "=" in a and _key(a) == key]
    return values[-1] if values else None


def without(args: list[str], *keys: str) -> list[str]:
    return [a for a in args if not ("=" in a and _key(a) in keys)]


def value_overrides(args: list[str]) -> list[str]:
    """`key=value` settings among the overrides (no group selections, deletions, hydra.*),
    as OmegaConf's dotlist takes them."""
    groups = _groups()
    return [a.lstrip("+") for a in args if "=" in a and not a.startswith("~")
            and _key(a) not in groups and not _key(a).startswith("hydra.")]


def _groups() -> set[str]:
    return {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}


def check_run_dir(path: Path) -> Path:
    if not (path / CONFIG_FILE).is_file():
        raise ConfigError(f"{path} is not a run dir (no {CONFIG_FILE}); pass the folder of an "
                          "`sft train` run")
    return path


def from_run_dir(run_dir: Path, overrides: list[str]) -> list[str]:
    """Register the run's config as the Hydra primary config PRIMARY; returns the overrides
    to pass to Hydra (group selections turned into `+group=option`)."""
    saved = OmegaConf.to_container(OmegaConf.load(check_run_dir(run_dir) / CONFIG_FILE))
    assert isinstance(saved, dict)
    groups, hydra_args = _groups(), []
    for arg in overrides:
        key = _key(arg)
        if "=" in arg and key in groups and not arg.startswith("~"):
            saved.pop(key, None)  # the option replaces the section, on the schema's defaults
            arg = "+" + arg.lstrip("+")
        hydra_args.append(arg)
    hydra = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "train.yaml").hydra)
    node = {"defaults": ["sft_schema", "_self_"], **saved, "resume": None, "hydra": hydra}
    ConfigStore.instance().store(name=PRIMARY, node=node)
    return hydra_args


def latest_run(args: list[str]) -> Path:
    """The newest run of the task/model these overrides select, under runs/<task>/<model>/:
    the one written to last (a crashed run is the newest until something else runs)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=without(args, "resume", "run_dir"))
    root = Path("runs") / cfg.task.name / cfg.model.name
    runs = [p for p in root.glob("*") if (p / CONFIG_FILE).is_file()] if root.is_dir() else []
    if not runs:
        raise ConfigError(f"resume=latest: no run under {root}/; pass resume=RUN_DIR")

    def last_write(run: Path) -> float:
        return max(p.stat().st_mtime for p in [run, *run.iterdir(), *run.glob("checkpoints/*")])

    return max(runs, key=last_write)


def resume_args(args: list[str], value: str) -> list[str]:
    """Overrides that continue the run `value` (a run dir or `latest`) in its own folder,
    from its config.yaml plus `args`; the run's original .hydra/ record is kept."""
    if any(a.split("=")[0] in HYDRA_FLAGS for a in args) or "-m" in args or "--multirun" in args:
        raise ConfigError("resume= continues one run from its own config.yaml; drop "
                          "--multirun/--config-path/--config-name")
    run_dir = latest_run(args) if value == "latest" else Path(value)
    rest = from_run_dir(run_dir, without(args, "resume", "run_dir"))
    return [*rest, f"run_dir={run_dir}", f"resume={run_dir}", "hydra.output_subdir=null"]


def native_args(args: list[str]) -> list[str]:
    """`sft train --config-path RUN_DIR/.hydra --config-name config`: that config has no
    `hydra:` section, so give it our run dir (a new one unless run_dir= is given; never the
    original's, which its config may name) and train.log."""
    if not any(a.split("=")[0] in HYDRA_FLAGS[:2] for a in args):
        return args
    extra = []
    if find_arg(args, "hydra.run.dir") is None:
        default = RunConfig.__dataclass_fields__["run_dir"].default
        pattern = "${run_dir}" if find_arg(args, "run_dir") else default
        extra.append(f"hydra.run.dir={pattern}")
    if find_arg(args, "hydra.job_logging.handlers.file.filename") is None:
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
