"""`sft cv [folds=5] [overrides]`: k-fold cross-validation as a sweep over `data.fold`.

Train and validation are pooled and split into `folds` folds with the fixed
`data.split_seed` (stratified by label for classification, see sft.data.folds); fold k is
an ordinary `sft train` job with `data.folds=K data.fold=k`, so each fold dir
`<cv dir>/fold-k/` is a complete run dir (`.hydra/` included) whose config says which fold
it is, and `sft reproduce` on it retrains that fold. The end is the sweep report over the
folds, with mean ± std.
"""

from __future__ import annotations

from sft.cli.train import train_command
from sft.config.compose import compose_run, value, without
from sft.errors import ConfigError

DEFAULT_DIR = "cv/${task.name}/${model.name}/${started:%Y-%m-%d_%H-%M-%S}"


def run(args: list[str]) -> int:
    flags = [a for a in args if a.startswith("-")]
    if flags:
        raise ConfigError(f"sft cv takes no option '{flags[0]}'; pass folds=K and key=value "
                          "overrides (a sweep of cv runs is not supported)")
    folds = value(args, "folds") or "5"
    if not folds.isdigit() or int(folds) < 2:
        raise ConfigError(f"folds must be an integer >= 2, got '{folds}'")
    overrides = without(args, "folds", "run_dir", "data.folds", "data.fold")
    cv_dir = compose_run([*overrides, f"run_dir={value(args, 'run_dir') or DEFAULT_DIR}"]).run_dir
    every_fold = ",".join(str(k) for k in range(int(folds)))
    return train_command(["--multirun", *overrides, f"data.folds={folds}", f"data.fold={every_fold}",
                          f"hydra.sweep.dir={cv_dir}", "hydra.sweep.subdir=fold-${data.fold}"],
                         title=f"{folds}-fold cv")
