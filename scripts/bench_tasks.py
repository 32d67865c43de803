"""CPU benchmark: fine-tune the packaged MiniLM-L6 with the real `sft train` on CoNLL-2003
NER or on the SQuAD v1.1 article split, then print the metrics.

    python scripts/bench_tasks.py ner [--data ../shared/data] [extra overrides...]
    python scripts/bench_tasks.py qa

On 2 CPU cores the NER preset takes ~20 minutes and the QA preset ~35. Run it under
`flock /tmp/sft-heavy.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PRESETS: dict[str, list[str]] = {
    # all 14,041 CoNLL training sentences, 3 epochs of 878 steps; CoNLL dev (validation, 3,250
    # sentences) and test (3,453), scored with seqeval strict IOB2
    "ner": ["task=ner", "trainer.epochs=3", "trainer.batch_size=16", "optimizer.lr=1e-4"],
    # the ~8.4k training questions of the 38-article split, 1 epoch; all questions of the 10
    # held-out articles, official EM/F1
    "qa": ["task=qa", "trainer.epochs=1", "trainer.batch_size=32", "optimizer.lr=1e-4",
           "trainer.eval_batch_size=64"],
}
KEYS = {"ner": ["validation/f1", "validation/precision", "validation/recall", "validation/accuracy",
                "test/f1", "test/precision", "test/recall", "test/accuracy"],
        "qa": ["validation/exact_match", "validation/f1"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(PRESETS))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("overrides", nargs="*", help="extra `sft train` overrides")
    ns = parser.parse_args()
    run_dir = ns.run_dir or f"runs/bench/{ns.task}-minilm-{time.strftime('%Y%m%d-%H%M%S')}"
    args = [*PRESETS[ns.task], "model=minilm", "hardware=cpu", f"data.dir={ns.data}",
            f"run_dir={run_dir}", "trainer.progress=false", *ns.overrides]
    print("sft train " + " ".join(args), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sft.cli", "train", *args], cwd=REPO, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return done.returncode
    metrics = json.loads((REPO / run_dir / "metrics.json").read_text())
    print(f"\n{ns.task} / minilm: wall {seconds / 60:.1f} min, train "
          f"{metrics['train/runtime_s'] / 60:.1f} min, {metrics['train/steps']} steps")
    for key in KEYS[ns.task]:
        if key in metrics:
            print(f"  {key:24s} {metrics[key]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
