"""sft vs. transformers.Trainer: same model, data and hyperparameters, fresh processes.

    python scripts/bench.py            # the full bench the README quotes (`make bench`)
    python scripts/bench.py --quick    # a small version, a few minutes on 2 CPU cores
    python scripts/bench.py --full     # one whole epoch of SST-2 each, sft and HF best (fp32)

MiniLM on SST-2 (batch 32, max length 128, lr 5e-5, linear schedule with 6% warmup, weight
decay 0.01, clipping 1.0, seed 42), fine-tuned by `sft train` and by the HF Trainer with its
best settings (dynamic padding + train_sampling_strategy="group_by_length") and with
run_glue's default (pad to max length), in fp32 and bf16. Cases run interleaved
(A B A B ...) so a noisy machine hurts all alike; the table shows medians. Also measured:
matmul peak (the roofline for model TFLOP/s = 6 x non-embedding params x real tokens/s),
sft's speed features switched off one at a time, evaluation memory on a 1x and a 10x
validation set, and start-up time with a cold and a warm tokenization cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHILD = Path(__file__).resolve().parent / "bench_child.py"
console = Console(width=None if sys.stdout.isatty() else 150)  # full table in logs

# name -> (kind, precision, extra sft overrides or HF padding); sft's defaults are its best
TRAIN_CASES: dict[str, dict[str, Any]] = {
    "sft fp32": {"kind": "sft", "precision": "fp32"},
    "HF best fp32": {"kind": "hf", "precision": "fp32", "padding": "longest"},
    "sft bf16": {"kind": "sft", "precision": "bf16"},
    "HF best bf16": {"kind": "hf", "precision": "bf16", "padding": "longest"},
    "HF pad-to-max fp32": {"kind": "hf", "precision": "fp32", "padding": "max_length"},
}
# each of sft's speed features switched off (or on, for compile) alone, fp32
ABLATIONS: dict[str, list[str]] = {
    "sft fp32 -group_by_length": ["trainer.group_by_length=false"],
    "sft fp32 eager attention": ["model.attn_implementation=eager"],
    "sft fp32 -cls_only_last_layer": ["task.cls_only_last_layer=false"],
    "sft fp32 -fused AdamW": ["optimizer.fused=false"],
    "sft fp32 foreach AdamW": ["optimizer.fused=false", "optimizer.foreach=true"],
    "sft fp32 pad_to_multiple_of=8": ["trainer.pad_to_multiple_of=8"],
    "sft fp32 +compile": ["hardware.compile=true"],
    "sft fp32 -reuse_freed_memory": ["hardware.reuse_freed_memory=false"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    from sft.parallel.device import cpu_has_bf16

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small version (~3 min on 2 cores)")
    p.add_argument("--full", action="store_true",
                   help="one whole epoch per case (sft and HF best, fp32; evaluation and a "
                        "checkpoint only at the end on both sides) and sft's per-phase breakdown")
    p.add_argument("--repeats", type=int, help="runs per case (median reported); default 3, quick 1")
    p.add_argument("--steps", type=int, help="optimizer steps per run; default 400, quick 12")
    p.add_argument("--padmax-steps", type=int, help="steps of the slow pad-to-max case")
    p.add_argument("--bf16-steps", type=int, help="steps of bf16 cases; default --steps where "
                   "bf16 is native, else steps/10 (quick: skipped), 0 skips them")
    p.add_argument("--train-samples", type=int, help="train subset; default all 67,349")
    p.add_argument("--eval-samples", type=int, help="validation subset; default all 872")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.06)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--cases", nargs="*", help="run only these cases (names as in the table)")
    p.add_argument("--ablations", action=argparse.BooleanOptionalAction,
                   help="sft's speed features switched off one at a time (default: on, quick off)")
    p.add_argument("--ablation-repeats", type=int, default=1,
                   help="runs per ablation, interleaved with the cases (default 1)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--output", default="bench-results.json")
    args = p.parse_args(argv)
    quick = args.quick
    args.ablations = (not quick) if args.ablations is None else args.ablations
    args.repeats = args.repeats or (1 if quick or args.full else 3)
    args.steps = args.steps or (12 if quick else 400)
    args.padmax_steps = args.padmax_steps or (4 if quick else 40)
    if quick:
        args.train_samples = args.train_samples or 2000
        args.eval_samples = args.eval_samples or 200
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.bf16_steps is None:
        native = (torch.cuda.is_bf16_supported() if args.device.startswith("cuda")
                  else cpu_has_bf16())
        args.bf16_steps = args.steps if native else 0 if quick else max(4, args.steps // 10)
    return args


def machine(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "threads": args.threads,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "load_avg_at_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


CHILD_TIMEOUT_S = 3600


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a fresh interpreter; the child's last line is `BENCH {json}`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(CHILD), json.dumps(spec)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        console.print(f"[red]{spec.get('name', spec['kind'])} timed out[/red]")
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        console.print(f"[red]{spec.get('name', spec['kind'])} failed[/red]:\n{tail}")
        return {"error": tail.splitlines()[-1] if tail else f"exit {proc.returncode}"}
    result = json.loads(lines[-1][6:])
    result["process_s"] = time.perf_counter() - start
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    ok = [r for r in runs if "error" not in r]
    keys = {k for r in ok for k, v in r.items() if isinstance(v, (int, float))}
    return {k: statistics.median(r[k] for r in ok if k in r) for k in sorted(keys)} if ok else {}


def base_spec(args: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    return {"data_dir": args.data_dir, "max_length": args.max_length, "batch_size": args.batch_size,
            "lr": args.lr, "warmup": args.warmup, "steps": args.steps, "seed": args.seed,
            "device": args.device, "threads": args.threads, "cache_dir": cache_dir,
            "train_samples": args.train_samples, "eval_samples": args.eval_samples,
            "precision": "fp32"}


def measure(args: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    """Run every case; `out` is saved to --output after each child, so a bench cut short
    keeps what it measured."""
    base = base_spec(args, cache_dir)
    say = console.print
    out: dict[str, Any] = {"machine": machine(args), "command": shlex.join([sys.executable, *sys.argv]),
                           "settings": {k: v for k, v in base.items() if k != "cache_dir"},
                           "startup": {}, "matmul": {}, "cases": {}, "eval_memory": {}}

    def child(section: dict[str, Any], key: str, spec: dict[str, Any]) -> None:
        result = run_child({**base, **spec})
        if ("steps" in spec or spec["kind"] == "sft") and "steps" not in result:
            result["steps"] = spec.get("steps", base["steps"])
        if section is out["cases"]:
            section.setdefault(key, {"runs": []})["runs"].append(result)
        else:
            section[key] = result
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n")

    if args.full:
        return measure_full(args, out, child)
    # start-up first: the cold launch tokenizes into the (empty) cache the others reuse
    say("start-up: cold then warm tokenization cache")
    for when in ("cold", "warm"):
        child(out["startup"], when, {"kind": "startup"})
    say("matmul peak")
    child(out, "matmul", {"kind": "matmul"})
    cases = {n: c for n, c in TRAIN_CASES.items() if not args.cases or n in args.cases}
    if args.bf16_steps <= 0:
        say("bf16 cases skipped: no native bf16 matmul here (AVX512-BF16/AMX or a bf16 GPU); "
            "--bf16-steps N runs them anyway")
        cases = {n: c for n, c in cases.items() if c["precision"] != "bf16"}
    for name, extra in ABLATIONS.items() if args.ablations else ():
        if not args.cases or name in args.cases:
            cases[name] = {"kind": "sft", "precision": "fp32", "extra": extra,
                           "repeats": args.ablation_repeats}
    for rep in range(max(args.repeats, args.ablation_repeats)):  # interleaved: A B A B ...
        for name, case in cases.items():
            repeats = case.get("repeats", args.repeats)
            if rep >= repeats:
                continue
            steps = (args.padmax_steps if case.get("padding") == "max_length" else
                     args.bf16_steps if case["precision"] == "bf16" else args.steps)
            say(f"[{rep + 1}/{repeats}] {name} ({steps} steps)")
            child(out["cases"], name, {**case, "name": name, "steps": steps})
    say("evaluation memory: 1x and 10x validation set")
    for k in (1, 10):
        child(out["eval_memory"], f"{k}x", {"kind": "evalmem", "eval_repeat": k})
    for case in out["cases"].values():
        case["median"] = median_of(case["runs"])
    return out


FULL_CASES = {"sft fp32": {"kind": "sft", "precision": "fp32"},
              "HF best fp32": {"kind": "hf", "precision": "fp32", "padding": "longest"},
              # HF does not touch the allocator; this row gives it sft's setting too
              "HF best fp32 +reuse_freed_memory": {"kind": "hf", "precision": "fp32",
                                                   "padding": "longest",
                                                   "keep_freed_memory": True}}


def measure_full(args: argparse.Namespace, out: dict[str, Any], child: Any) -> dict[str, Any]:
    """One epoch per case, like with like: neither side evaluates or saves before the end
    (HF: save_strategy="no"; sft: its one evaluation and checkpoint come after the last
    step, outside train_s). The cold start-up tokenizes into the cache both cases reuse."""
    say = console.print
    say("start-up (tokenizes the train split into the cache)")
    child(out["startup"], "warm", {"kind": "startup"})
    say("matmul peak")
    child(out, "matmul", {"kind": "matmul"})
    for rep in range(args.repeats):
        for name, case in FULL_CASES.items():
            if args.cases and name not in args.cases:
                continue
            say(f"[{rep + 1}/{args.repeats}] {name} (1 epoch)")
            child(out["cases"], name, {**case, "name": name, "epochs": 1})
    for case in out["cases"].values():
        case["median"] = median_of(case["runs"])
    return out


def summarize(out: dict[str, Any]) -> None:
    """Ratios and model GFLOP/s, added to `out` in place."""
    params = out["startup"]["warm"].get("non_embedding_params")
    peak = out["matmul"]
    for name, case in out["cases"].items():
        med = case["median"]
        if not med:
            continue
        precision = "bf16" if "bf16" in name else "fp32"
        if params and "tokens_per_s" in med:
            med["model_gflops"] = 6 * params * med["tokens_per_s"] / 1e9
            if peak.get(f"{precision}_gflops"):
                med["of_peak"] = med["model_gflops"] / peak[f"{precision}_gflops"]
        hf = out["cases"].get(f"HF best {precision}", {}).get("median", {})
        if name.startswith("sft") and hf.get("samples_per_s"):
            med["vs_hf_best"] = med["samples_per_s"] / hf["samples_per_s"]
            med["accuracy_delta_pt"] = 100 * (med["accuracy"] - hf["accuracy"])


def fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def print_tables(out: dict[str, Any]) -> None:
    m, s = out["machine"], out["settings"]
    table = Table(title=f"sft vs HF Trainer · MiniLM SST-2 · batch {s['batch_size']} · "
                        f"{m['cpu']} ({m['threads']} threads)"
                        + (f" · {m['gpu']}" if m["gpu"] else ""))
    for col in ("case", "runs", "steps", "samples/s", "real tok/s", "train s", "pad %", "peak MB",
                "val acc", "sft/HF best", "model GFLOP/s", "% matmul peak"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for name, case in out["cases"].items():
        med = case["median"]
        ok = sum("error" not in r for r in case["runs"])
        table.add_row(name, f"{ok}/{len(case['runs'])}", fmt(case["runs"][0].get("steps"), "d"),
                      fmt(med.get("samples_per_s"), ".1f"),
                      fmt(med.get("tokens_per_s"), ".0f"), fmt(med.get("train_s"), ".1f"),
                      fmt(100 * med["padding_fraction"], ".1f") if "padding_fraction" in med
                      else "-", fmt(med.get("peak_mb"), ".0f"), fmt(med.get("accuracy"), ".4f"),
                      fmt(med.get("vs_hf_best"), ".2f") + ("x" if "vs_hf_best" in med else ""),
                      fmt(med.get("model_gflops"), ".1f"),
                      fmt(100 * med["of_peak"], ".0f") if "of_peak" in med else "-")
    console.print(table)
    print_phases(out)
    mm = out["matmul"]
    console.print(f"matmul peak: fp32 {fmt(mm.get('fp32_gflops'), '.1f')} GFLOP/s, "
                  f"bf16 {fmt(mm.get('bf16_gflops'), '.1f')} GFLOP/s")
    st = out["startup"]
    if "cold" not in st:
        return
    console.print("start-up after model load (data, lengths, optimizer, first batch): cold cache "
                  f"{fmt(st['cold'].get('startup_s'), '.2f')} s, warm cache "
                  f"{fmt(st['warm'].get('startup_s'), '.2f')} s")
    em = out["eval_memory"]
    if em:
        console.print("evaluation memory growth (streamed): " + ", ".join(
            f"{k} ({fmt(v.get('eval_rows'), 'd')} rows) +{fmt(v.get('eval_growth_mb'), '.1f')} MB"
            for k, v in em.items()))


def print_phases(out: dict[str, Any]) -> None:
    """Where each sft case's wall time went (the loop's meter: time/<phase>_s)."""
    table = Table(title="sft: where the run's time goes (seconds, median run)")
    phases = ["data", "forward", "backward", "optimizer", "evaluation", "checkpoint", "other"]
    for col in ("case", *phases, "wall"):
        table.add_column(col, justify="left" if col == "case" else "right")
    rows = 0
    for name, case in out["cases"].items():
        med = case["median"]
        if "phase/wall_s" not in med:
            continue
        wall = med["phase/wall_s"]
        table.add_row(name, *(f"{med.get(f'phase/{p}_s', 0):.1f} "
                              f"({100 * med.get(f'phase/{p}_s', 0) / max(wall, 1e-9):.0f}%)"
                              for p in phases), f"{wall:.1f}")
        rows += 1
    if rows:
        console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache_dir = tempfile.mkdtemp(prefix="sft-bench-cache-")
    try:
        out = measure(args, cache_dir)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    summarize(out)
    print_tables(out)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
