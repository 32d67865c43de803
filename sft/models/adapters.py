"""LoRA adapters through peft: which modules get one, the task's head trained in full,
loading an adapter's weights, and merging it into a plain transformers model.

With an adapter the trainer's model is a peft `PeftModel`; its save_pretrained writes only
what changed (adapter_model.safetensors + adapter_config.json: the LoRA weights and the
heads in modules_to_save), so checkpoints hold no frozen base weights.
"""

from __future__ import annotations

import re
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from sft.config.schema import AdapterConfig
from sft.errors import ModelError
from sft.models.freezing import layer_index

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
MERGED_ADAPTER = "adapter"  # a merged best/ keeps the adapter it was merged from here
_LINEAR = (nn.Linear, Conv1D)  # Conv1D: GPT-2's linear layers
_ADAPTABLE = (*_LINEAR, nn.Embedding, nn.Conv1d, nn.Conv2d)  # layer types peft's LoRA takes


def adapter_folder(folder: Path) -> Path | None:
    """The adapter a model folder holds: the folder itself (an adapter run's checkpoint or
    unmerged best/), the adapter a merged best/ keeps, or None (a full model)."""
    for candidate in (folder, folder / MERGED_ADAPTER):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    return None


def head_modules(model: PreTrainedModel) -> list[str]:
    """The task's head: the top-level modules outside the pretrained body that hold weights
    (a classifier, `score`, `qa_outputs`), never an LM head (the output embeddings)."""
    body, output = model.base_model, model.get_output_embeddings()
    if body is model:  # e.g. T5, EncoderDecoderModel: no separate body, no task head
        return []
    return [name for name, child in model.named_children()
            if child is not body and child is not output and any(True for _ in child.parameters())]


def _matches(name: str, pattern: str) -> bool:
    """peft's rules: a name matches itself and any module name ending in `.name`; a pattern
    may also be a regex over the whole module name."""
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _inside(name: str, modules: set[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def target_modules(model: PreTrainedModel, cfg: AdapterConfig, skip: set[str],
                   freeze_layers: int = 0) -> list[str]:
    """Full names of the modules that get a LoRA adapter: all linear layers, or those the
    names/regex in adapter.target_modules match; never inside `skip` (heads trained in full,
    the LM head) nor in the bottom `freeze_layers` layers (model.freeze_layers)."""
    leaves = {n: m for n, m in model.named_modules() if isinstance(m, _ADAPTABLE)}

    def allowed(name: str) -> bool:
        index = layer_index(name + ".")
        return not _inside(name, skip) and (index is None or index >= freeze_layers)

    if cfg.target_modules == "all-linear":
        found = [n for n, m in leaves.items() if isinstance(m, _LINEAR) and allowed(n)]
    else:
        patterns = [cfg.target_modules] if isinstance(cfg.target_modules, str) \
            else list(cfg.target_modules)
        found = []
        for pattern in patterns:
            hits = [n for n in leaves if _matches(n, pattern)]
            if not hits:
                names = sorted({n.rsplit(".", 1)[-1] for n in leaves})
                raise ModelError(f"adapter.target_modules entry '{pattern}' matches no layer of "
                                 f"model '{model.config.model_type}'; its layers are named: "
                                 f"{', '.join(names)}")
            found += [n for n in hits if allowed(n) and n not in found]
    if not found:
        raise ModelError("adapter.target_modules leaves no layer to adapt (all are heads or "
                         "below model.freeze_layers); choose other modules")
    return found


def attach(model: PreTrainedModel, cfg: AdapterConfig, freeze_layers: int = 0) -> PeftModel:
    """The model with LoRA adapters on the chosen layers, the base frozen and the task's head
    (adapter.modules_to_save; null: head_modules) trained in full."""
    heads = head_modules(model) if cfg.modules_to_save is None else list(cfg.modules_to_save)
    names = [n for n, _ in model.named_modules()]
    for head in heads:
        if not any(_matches(n, head) for n in names):
            raise ModelError(f"adapter.modules_to_save entry '{head}' is not a module of model "
                             f"'{model.config.model_type}'; top-level modules: "
                             f"{', '.join(n for n, _ in model.named_children())}")
    output = model.get_output_embeddings()
    skip = set(heads) | {n for n, m in model.named_modules() if output is not None and m is output}
    if getattr(model, "is_loaded_in_4bit", False):  # QLoRA: fp32 norms, checkpointing
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=target_modules(model, cfg, skip, freeze_layers),
                      modules_to_save=heads or None, use_rslora=cfg.use_rslora,
                      use_dora=cfg.use_dora)
    return get_peft_model(model, lora)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; with an adapter, total counts the base once."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def load_adapter_weights(model: PeftModel, folder: Path) -> None:
    """Load the adapter (and trained heads) saved in `folder` into an adapted model."""
    state = load_file(folder / ADAPTER_WEIGHTS)
    result = set_peft_model_state_dict(model, state)
    if result.unexpected_keys:
        raise RuntimeError(f"adapter weights in {folder} do not fit the model: unexpected "
                           f"{result.unexpected_keys[:3]}")


def merge(model: PeftModel) -> PreTrainedModel:
    """The adapter merged into the base weights: a plain transformers model. peft unties a
    trained head from the input embeddings it was tied to (tie_word_embeddings=False), so a
    reload keeps it; sft.run.export checks that after every reload."""
    return model.merge_and_unload()
