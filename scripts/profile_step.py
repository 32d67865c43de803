"""Where a training step's time goes, operator by operator: torch.profiler over sft's own loop.

    python scripts/profile_step.py                  # MiniLM on SST-2, batch 32, 20 profiled steps
    python scripts/profile_step.py --steps 10 --rows 20 --extra hardware.compile=true

Builds the run exactly as `sft train` does (same features, model, optimizer, strategy),
warms up, then profiles `--steps` optimizer steps and prints the operators with the most
self time, and the share of the step that is matmul (aten::addmm / mm / bmm / linear).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear",
              "aten::_scaled_dot_product_flash_attention_for_cpu")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--extra", nargs="*", default=[], help="more sft train overrides")
    args = p.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from sft.config.compose import compose_run
    from sft.parallel.device import apply_threads, resolve_device
    from sft.parallel.strategies import make_strategy
    from sft.parallel.world import World
    from sft.run.model import build_model
    from sft.run.rundir import RunDir
    from sft.run.runner import prepare
    from sft.tracking.sinks import Sinks
    from sft.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        run = compose_run(["task=sentiment", "model=minilm", "hardware=cpu",
                           f"data.dir={args.data_dir}", "trainer.progress=false",
                           f"run_dir={tmp}/run", *args.extra])
        apply_threads(run.hardware)
        prepared = prepare(run)
        model = build_model(run, prepared.task)
        trainer = Trainer(run, prepared.task, model, prepared.tokenizer, prepared.features,
                          Path(tmp), Sinks(RunDir(tmp).metrics_log()),
                          make_strategy(World(), resolve_device(run.hardware)))
        stream = trainer._steps()
        trainer.model.train()
        for _ in range(args.warmup):
            trainer._train_step(next(stream))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                trainer._train_step(next(stream))
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(f"{args.steps} steps: {total / 1e6:.2f} s of operator self time, "
          f"{100 * matmul / max(total, 1):.0f}% in matmul/attention kernels "
          f"({', '.join(MATMUL_OPS[:3])}, ...); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
