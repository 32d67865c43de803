"""Load models and tokenizers: hub id, local folder, packaged weights, random init."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sft.config.schema import ModelConfig
from sft.errors import ModelError
from sft.models.freezing import freeze


def _source(cfg: ModelConfig) -> str:
    path = Path(cfg.name_or_path).expanduser()
    looks_local = cfg.name_or_path.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise ModelError(f"model folder not found: {path}; set model.name_or_path to a folder "
                         "with config.json, or to a hub id")
    return str(path) if looks_local else cfg.name_or_path


def _load(what: str, cfg: ModelConfig, loader: Any, **kwargs: Any) -> Any:
    source = _source(cfg)
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    try:
        return loader(source, revision=cfg.revision, **kwargs)
    except OSError as err:
        if Path(source).is_dir():
            raise ModelError(f"cannot load the {what} from {source}: {err}".splitlines()[0]) from err
        raise ModelError(
            f"model '{source}' is not in the local Hugging Face cache and the hub cannot be "
            f"reached; download it once online (`hf download {source}`) or set "
            "model.name_or_path=/path/to/a/local/folder"
        ) from err


_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


def weight_files(cfg: ModelConfig) -> list[Path]:
    """The local files the base model is built from: its weights (for model.init=random,
    only config.json), so env.json can hash them; empty when they are not on this machine."""
    try:
        source = Path(_source(cfg))
    except ModelError:
        return []
    if not source.is_dir():  # a hub id: look in the local cache only
        try:
            from huggingface_hub import snapshot_download

            source = Path(snapshot_download(cfg.name_or_path, revision=cfg.revision,
                                            local_files_only=True))
        except Exception:  # not cached (or no hub library): nothing to hash
            return []
    if cfg.init == "random":
        patterns: tuple[str, ...] = ("config.json",)
    elif cfg.gguf_file:
        patterns = (cfg.gguf_file,)
    else:
        patterns = _WEIGHTS
    return sorted({p for pattern in patterns for p in source.glob(pattern) if p.is_file()})


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    return _load("tokenizer", cfg, AutoTokenizer.from_pretrained)


def load_model(auto_class: Any, cfg: ModelConfig, **config_kwargs: Any) -> PreTrainedModel:
    """Pretrained weights, or a random init of the same architecture (model.init=random)."""
    kernel = {} if cfg.attn_implementation is None else {
        "attn_implementation": cfg.attn_implementation}
    try:
        if cfg.init == "random":
            config = _load("config", cfg, AutoConfig.from_pretrained,
                           **{**cfg.config_overrides, **config_kwargs})
            model = auto_class.from_config(config, **kernel)
        else:
            model = _load("model", cfg, auto_class.from_pretrained,
                          **{**cfg.config_overrides, **config_kwargs}, **kernel)
    except (ValueError, ImportError) as err:
        if "attn_implementation" not in str(err) or not kernel:
            raise
        raise ModelError(f"model.attn_implementation={cfg.attn_implementation} cannot be used "
                         "here; use null (transformers' default), eager or sdpa") from err
    freeze(model, cfg)
    return model


def load_labelled_model(auto_class: Any, cfg: ModelConfig,
                        label_names: list[str]) -> PreTrainedModel:
    """A model with a classification head over `label_names`, saved with id2label so
    transformers pipelines print the names."""
    return load_model(auto_class, cfg, num_labels=len(label_names),
                      id2label=dict(enumerate(label_names)),
                      label2id={name: i for i, name in enumerate(label_names)})
