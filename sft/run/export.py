"""Write a run's model for use without sft: merged into a full transformers model (with its
tokenizer, chat template and generation config) and checked after a reload from disk, or as
the adapter folder peft loads onto the base."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.config.compose import load_run
from sft.config.schema import RunConfig
from sft.errors import ModelError, SftError
from sft.models.adapters import MERGED_ADAPTER, adapter_folder, merge
from sft.models.loading import load_tokenizer
from sft.run.model import adapted_model, saved_model
from sft.tasks import build_task
from sft.train.checkpoint import BEST, atomic_folder_write

log = logging.getLogger("sft")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ATOL = 1e-4  # a reloaded export's logits against the model it was written from
# a probe batch for that check: any text the tokenizer takes
PROBE = ["The film was a quiet delight from start to finish.",
         "Shares fell 4% in Tokyo after the central bank's report on Friday."]


def probe_outputs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[torch.Tensor]:
    """Every float output (logits, start/end logits, ...) of the model on PROBE, in fp32."""
    found: list[torch.Tensor] = []
    config = model.config
    start = getattr(config, "decoder_start_token_id", None) or getattr(config, "pad_token_id",
                                                                        None) or 0
    model.eval()
    for text in PROBE:  # one text per call: no padding, so no pad token needed
        ids = tokenizer(text, return_tensors="pt")["input_ids"].to(model.device)
        inputs: dict[str, Any] = {"input_ids": ids}
        if getattr(config, "is_encoder_decoder", False):
            inputs["decoder_input_ids"] = torch.full((1, 1), start, device=ids.device)
        else:
            inputs["use_cache"] = False
        with torch.no_grad():
            outputs = model(**inputs)
        found += [v.float() for v in outputs.values()
                  if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return found


def _check(got: list[torch.Tensor], expected: list[torch.Tensor], what: str, atol: float) -> float:
    worst = max(float((g - e).abs().max()) for g, e in zip(got, expected, strict=True))
    if worst > atol:
        raise ModelError(f"{what}: logits differ by {worst:.2e} (> {atol:g}) on the probe "
                         "batch; the export is not faithful (set SFT_DEBUG=1 and report it)")
    return worst


def write_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path,
                dtype: torch.dtype, keep_adapter: Path | None = None) -> float:
    """Save `model` (cast to `dtype`) and the tokenizer atomically into `target`, reload it
    from disk and check its logits; returns the largest difference. `keep_adapter` is copied
    to target/adapter (read before `target` is replaced, so it may live inside it)."""
    model = model.to(dtype)
    expected = probe_outputs(model, tokenizer)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if keep_adapter is not None:
            shutil.copytree(keep_adapter, tmp / MERGED_ADAPTER,
                            ignore=shutil.ignore_patterns("manifest.json", "trainer_state.pt"))

    atomic_folder_write(target, write)
    reloaded = type(model).from_pretrained(target, dtype=dtype)
    return _check(probe_outputs(reloaded, tokenizer), expected, f"{target} after a reload", ATOL)


def write_merged(adapted: PeftModel, tokenizer: PreTrainedTokenizerBase, target: Path,
                 dtype: torch.dtype = torch.float32, keep_adapter: Path | None = None) -> float:
    """Merge the adapter into its base (checked against the adapter model in fp32) and write
    the merged model with write_model."""
    reference = probe_outputs(adapted, tokenizer)
    merged = merge(adapted)
    _check(probe_outputs(merged, tokenizer), reference, "merging the adapter", ATOL)
    return write_model(merged, tokenizer, target, dtype, keep_adapter)


def merge_best(run: RunConfig, run_dir: Path) -> None:
    """Replace an adapter run's best/ (the adapter) by the merged model, keeping the adapter
    in best/adapter/."""
    best = run_dir / BEST
    folder = adapter_folder(best)
    if folder != best:  # no best yet, or already merged
        return
    tokenizer = load_tokenizer(saved_model(run.model, best))
    task = build_task(run.task, tokenizer, run.data, run.model)
    worst = write_merged(adapted_model(run, run_dir, task, best), tokenizer, best,
                         keep_adapter=best)
    log.info("best/: the adapter merged into a full model (reloaded logits within %.1e)", worst)


def export(run_dir: Path, output: Path | None, merge_adapter: bool, dtype: str,
           overrides: list[str] | None = None) -> tuple[Path, str]:
    """`sft export`: the run's best model into `output` (default RUN_DIR/export); returns the
    folder and what was written."""
    run = load_run(run_dir, overrides)
    best = run_dir / BEST
    if not best.is_dir():
        raise SftError(f"{best} not found; the run has not finished an evaluation yet")
    output = output or run_dir / "export"
    if output.resolve() == best.resolve() or output.is_file():
        raise SftError(f"--output {output} must be a new folder, not best/ or a file")
    tokenizer = load_tokenizer(saved_model(run.model, best))
    task = build_task(run.task, tokenizer, run.data, run.model)
    folder = adapter_folder(best)
    if folder is not None and not merge_adapter:
        def write(tmp: Path) -> None:
            shutil.copytree(folder, tmp, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("manifest.json", "trainer_state.pt"))
            tokenizer.save_pretrained(tmp)

        atomic_folder_write(output, write)
        return output, "the adapter (load it onto the base with peft, or export --merge)"
    if folder is not None:
        worst = write_merged(adapted_model(run, run_dir, task, folder), tokenizer, output,
                             DTYPES[dtype])
        return output, f"the merged model ({dtype}; reloaded logits within {worst:.1e})"
    model = task.build_model(saved_model(run.model, best))
    worst = write_model(model, tokenizer, output, DTYPES[dtype])
    return output, f"the full model ({dtype}; reloaded logits within {worst:.1e})"
