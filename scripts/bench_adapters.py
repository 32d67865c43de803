"""Full fine-tuning vs LoRA (adapter=lora) in sft, on the packaged models, CPU, fp32.

    python scripts/bench_adapters.py            # MiniLM on the demo's SST-2 data + SmolLM2 on Alpaca
    python scripts/bench_adapters.py --quick    # tiny random models, a few steps (the test)
    python scripts/bench_adapters.py --cases "minilm lora" --json out.json

Each case is the real `sft train` in a fresh process, one after another (run it on a quiet
machine). Per case: trainable and total parameters (metrics.json), training samples/s and
input tokens/s (sft's meter: training steps only, evaluation excluded), the process's peak
RSS (from the kernel, os.wait4), and the validation metric after the same steps, with the
baseline before step 0 where the task evaluates it.

- `minilm full` / `minilm lora`: `make demo`'s command (20,000 SST-2 training sentences, one
  epoch, batch 32; full at lr 1e-4 as the demo, LoRA at adapter=lora's own rate), dev accuracy
- `smollm2 full` / `smollm2 lora`: instruction tuning of SmolLM2-135M-Instruct on
  alpaca_sample (packed rows of 256 tokens, batch 4, 40 steps; full at lr 2e-5 as
  scripts/bench_instruction.py, LoRA at adapter=lora's rate), validation loss
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

SST2 = ["task=sentiment", "model=minilm", "data.max_train_samples=20000", "trainer.epochs=1"]
ALPACA = ["task=instruction", "model=smollm2", "trainer.batching=packed", "trainer.batch_size=4",
          "data.max_length=256", "data.max_train_samples=1000", "data.max_eval_samples=100",
          "trainer.max_steps=40", "trainer.eval_steps=40", "task.num_samples=0",
          "trainer.eval_first=true"]
CASES: dict[str, list[str]] = {
    "minilm full": [*SST2, "optimizer.lr=1e-4"],
    "minilm lora": [*SST2, "adapter=lora"],
    "smollm2 full": [*ALPACA, "optimizer.lr=2e-5"],
    "smollm2 lora": [*ALPACA, "adapter=lora"],
}
QUICK = {"model=minilm": "model=tiny-bert", "model=smollm2": "model=tiny-llama",
         "data.max_train_samples=20000": "data.max_train_samples=64",
         "data.max_train_samples=1000": "data.max_train_samples=16",
         "data.max_eval_samples=100": "data.max_eval_samples=8",
         "trainer.max_steps=40": "trainer.max_steps=2", "trainer.eval_steps=40": "trainer.eval_steps=2"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--quick", action="store_true", help="tiny models, a few steps")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    return parser.parse_args(argv)


def overrides(case: str, args: argparse.Namespace, run_dir: Path) -> list[str]:
    chosen = [QUICK.get(o, o) for o in CASES[case]] if args.quick else CASES[case]
    if args.quick and case.startswith("minilm"):
        chosen += ["data.max_eval_samples=32", "trainer.max_steps=4", "trainer.batch_size=16"]
    return [*chosen, "hardware=cpu", "trainer.progress=false", f"data.dir={args.data_dir}",
            f"run_dir={run_dir}"]


def run_case(case: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`sft train` for one case in a fresh process; its numbers, or the error it printed."""
    run_dir = work / case.replace(" ", "-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sft.cli", "train",
                                 *overrides(case, args, run_dir)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            return {"error": (log.read().strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    final = json.loads((run_dir / "metrics.json").read_text())
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if r["split"] == "validation"]
    metric = final["best/metric"].split("/", 1)[1]
    return {
        "trainable": final["params/trainable"], "total": final["params/total"],
        "samples_per_s": final["train/samples_per_s"], "tokens_per_s": final["train/tokens_per_s"],
        "peak_rss_mb": usage.ru_maxrss / 1024, "steps": final["train/steps"], "metric": metric,
        "before": evaluations[0][metric] if evaluations[0]["step"] == 0 else None,
        "after": evaluations[-1][metric], "process_s": round(time.perf_counter() - start, 1),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    head = ("| case | trainable params | samples/s | tokens/s | peak RSS | steps | validation "
            "(before → after) | wall |")
    rows = [head, "|" + "---|" * 8]
    for case, r in results.items():
        if "error" in r:
            rows.append(f"| {case} | error: {r['error']} |")
            continue
        before = f"{r['before']:.4f} → " if r["before"] is not None else ""
        rows.append(f"| {case} | {r['trainable']:,} of {r['total']:,} "
                    f"({100 * r['trainable'] / r['total']:.2f}%) | {r['samples_per_s']:.1f} | "
                    f"{r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} MB | {r['steps']} | "
                    f"{r['metric']} {before}{r['after']:.4f} | {r['process_s']:.0f} s |")
    for model in ("minilm", "smollm2"):
        full, lora = results.get(f"{model} full", {}), results.get(f"{model} lora", {})
        if "samples_per_s" in full and "samples_per_s" in lora:
            rows.append(f"\n{model}: LoRA/full speed {lora['samples_per_s'] / full['samples_per_s']:.2f}x, "
                        f"peak RSS {lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}x")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as work:
        for case in args.cases:
            print(f"running {case} ...", file=sys.stderr, flush=True)
            results[case] = run_case(case, args, Path(work))
            if args.json:  # after every case, so a long bench cut short keeps what it measured
                args.json.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
