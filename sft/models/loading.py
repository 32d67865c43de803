"""Load models and tokenizers: hub id, local folder, packaged weights, random init."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoTokenizer,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from sft.config.schema import ModelConfig
from sft.errors import ConfigError, ModelError
from sft.models.freezing import freeze
from sft.models.gguf import materialize_gguf


def _origin(cfg: ModelConfig) -> str:
    """name_or_path as given: a local folder (checked) or a hub id."""
    path = Path(cfg.name_or_path).expanduser()
    looks_local = cfg.name_or_path.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise ModelError(f"model folder not found: {path}; set model.name_or_path to a folder "
                         "with config.json, or to a hub id")
    return str(path) if looks_local else cfg.name_or_path


def _not_cached(source: str) -> ModelError:
    return ModelError(
        f"model '{source}' is not in the local Hugging Face cache and the hub cannot be "
        f"reached; download it once online (`hf download {source}`) or set "
        "model.name_or_path=/path/to/a/local/folder"
    )


def _source(cfg: ModelConfig) -> str:
    """What transformers loads from: the origin, or for model.gguf_file the plain folder it
    is converted to once (so loads take seconds, not a dequantization, and the trained model
    saves like any other)."""
    origin = _origin(cfg)
    if not cfg.gguf_file:
        return origin
    folder = origin
    if not Path(origin).is_dir():  # a GGUF file in a hub repo: fetch (or find) that one file
        from huggingface_hub import hf_hub_download

        try:
            folder = str(Path(hf_hub_download(origin, cfg.gguf_file, revision=cfg.revision)).parent)
        except OSError as err:
            raise _not_cached(origin) from err
    return str(materialize_gguf(folder, cfg.gguf_file, cfg.cache_dir))


def _load(what: str, cfg: ModelConfig, loader: Any, **kwargs: Any) -> Any:
    source = _source(cfg)  # never a GGUF file any more: no gguf_file= here
    try:
        return loader(source, revision=cfg.revision, **kwargs)
    except OSError as err:
        if Path(source).is_dir():
            raise ModelError(f"cannot load the {what} from {source}: {err}".splitlines()[0]) from err
        raise _not_cached(source) from err


_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


def weight_files(cfg: ModelConfig) -> list[Path]:
    """The local files the base model is built from: its weights (for model.init=random,
    only config.json; for model.gguf_file, the GGUF itself, not its converted copy), so
    env.json can hash them; empty when they are not on this machine."""
    try:
        source = Path(_origin(cfg))
    except ModelError:
        return []
    if not source.is_dir():  # a hub id: look in the local cache only
        try:
            from huggingface_hub import snapshot_download

            source = Path(snapshot_download(cfg.name_or_path, revision=cfg.revision,
                                            local_files_only=True))
        except Exception:  # not cached (or no hub library): nothing to hash
            return []
    if cfg.gguf_file:  # the architecture comes from the GGUF too
        patterns: tuple[str, ...] = (cfg.gguf_file,)
    elif cfg.init == "random":
        patterns = ("config.json",)
    else:
        patterns = _WEIGHTS
    return sorted({p for pattern in patterns for p in source.glob(pattern) if p.is_file()})


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    return _load("tokenizer", cfg, AutoTokenizer.from_pretrained)


def model_config(cfg: ModelConfig, **config_kwargs: Any) -> PretrainedConfig:
    """The config the model is built with (no weights loaded)."""
    overrides = {**cfg.config_overrides, **config_kwargs}
    if cfg.architecture:
        try:
            return AutoConfig.for_model(cfg.architecture, **overrides)
        except ValueError as err:
            raise ModelError(f"model.architecture '{cfg.architecture}' is not a transformers "
                             "model type (e.g. t5, bart, llama, bert)") from err
    config = _load("config", cfg, AutoConfig.from_pretrained, **overrides)
    if cfg.encoder_decoder:  # bert2bert: the decoder is the encoder's architecture + cross-attn
        decoder = config.__class__(**{**config.to_dict(), "is_decoder": True,
                                      "add_cross_attention": True})
        config = EncoderDecoderConfig.from_encoder_decoder_configs(config, decoder)
    return config


ENCODER_DECODER, DECODER_ONLY, ENCODER_ONLY = "encoder-decoder", "decoder-only", "encoder-only"


def model_kind(config: PretrainedConfig) -> str:
    """encoder-decoder (T5, BART, Marian, bert2bert), decoder-only (causal LMs) or
    encoder-only (BERT-style; transformers lists BERT as a causal LM too, but as a masked LM
    first), read from the model's config (model_config) alone."""
    if config.is_encoder_decoder:
        return ENCODER_DECODER
    causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return DECODER_ONLY if causal and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES \
        else ENCODER_ONLY


def _four_bit() -> dict[str, Any]:
    """from_pretrained arguments for a 4-bit NF4 base on this process's GPU (QLoRA's
    settings: double quantization, bf16 compute)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ModelError("model.quantization=nf4 (adapter=qlora) needs bitsandbytes; run "
                         "`pip install bitsandbytes` on a CUDA machine") from err
    import torch
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": config, "device_map": {"": torch.cuda.current_device()}}


def load_model(auto_class: Any, cfg: ModelConfig, **config_kwargs: Any) -> PreTrainedModel:
    """Pretrained weights, or a random init of the same architecture (model.init=random);
    model.encoder_decoder warm-starts an EncoderDecoderModel from an encoder checkpoint."""
    kernel = {} if cfg.attn_implementation is None else {
        "attn_implementation": cfg.attn_implementation}
    if cfg.quantization and cfg.init == "pretrained" and not cfg.encoder_decoder:
        kernel = {**kernel, **_four_bit()}
    try:
        if cfg.init == "random":
            config = model_config(cfg, **config_kwargs)
            model = auto_class.from_config(config, **kernel)
        elif cfg.encoder_decoder:
            model = _load("model", cfg, lambda source, revision: EncoderDecoderModel
                          .from_encoder_decoder_pretrained(source, source, **kernel))
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


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """`model.gradient_checkpointing=true`: every block's activations recomputed in the
    backward (non-reentrant torch.utils.checkpoint, which works with frozen inputs and LoRA)."""
    if not model.supports_gradient_checkpointing:
        raise ConfigError(f"{type(model).__name__} does not support gradient checkpointing; "
                          "set model.gradient_checkpointing=false")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 names it so
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(model.config, "use_cache", None):  # a cache is of no use in training
        model.config.use_cache = False
