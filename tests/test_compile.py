"""hardware.compile=true (torch.compile, inductor on CPU) trains like eager: the same logged
losses within a stated tolerance on tiny-bert, dynamic padding and all (recompilations are
bounded by torch's automatic dynamic shapes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_distributed import logged

from tests.conftest import train_tiny

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# inductor fuses the elementwise work and reorders reductions: fp32 on CPU measured ~1e-6
# apart over 6 steps; a wrong graph (a dropped mask, a stale weight) moves the loss by 1e-2
COMPILE_RTOL = 1e-4
ARGS = ["data.max_train_samples=96", "data.max_eval_samples=32", "trainer.batch_size=16",
        "trainer.max_steps=6", "trainer.eval_steps=3", "trainer.log_steps=1",
        "optimizer.lr=1e-3", "+model.config_overrides.hidden_dropout_prob=0",
        "+model.config_overrides.attention_probs_dropout_prob=0"]


def test_compiled_training_matches_eager(tmp_path: Path, data_dir: Path, cache_dir: Path) -> None:
    eager = train_tiny(tmp_path / "eager", data_dir, cache_dir, *ARGS)
    compiled = train_tiny(tmp_path / "compiled", data_dir, cache_dir, *ARGS,
                          "hardware.compile=true")
    for split in ("train", "validation"):
        a, b = logged(eager, split, "loss"), logged(compiled, split, "loss")
        assert len(a) == len(b) > 1
        assert b == pytest.approx(a, rel=COMPILE_RTOL), split
    assert logged(eager, "train", "loss")[0] != logged(eager, "train", "loss")[-1]  # it trained
