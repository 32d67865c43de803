"""GGUF checkpoints as plain Hugging Face folders: dequantized once, cached by content.

transformers can load a GGUF file directly, but every load re-parses and dequantizes it
(~30 s for SmolLM2-135M, against ~0.2 s for the saved float32 copy), so sft converts each
GGUF once into `<cache_dir>/models/<sha256[:16]>/` and loads that folder from then on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

from sft.errors import ModelError
from sft.files import sha256_file

log = logging.getLogger("sft")

_TMP = ".tmp-"  # `.<key>.tmp-<host>-<pid>`: a conversion in progress, never loaded
_keys: dict[tuple[str, int, int], str] = {}  # (path, size, mtime): hashing 100 MB costs ~0.2 s


def _key(gguf: Path) -> str:
    stat = gguf.stat()
    memo = (str(gguf.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _keys:
        _keys[memo] = sha256_file(gguf)[:16]
    return _keys[memo]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale(models: Path, key: str) -> None:
    """Delete temporary folders left by killed conversions on this host (a live process's,
    or another host's on a shared disk, are left alone)."""
    host = socket.gethostname()
    for tmp in models.glob(f".{key}{_TMP}*"):
        owner_host, _, pid = tmp.name.removeprefix(f".{key}{_TMP}").rpartition("-")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _convert(gguf: Path, dest: Path) -> None:
    """Dequantize `gguf` into `dest` as a float32 causal LM with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"cannot convert the GGUF file {gguf}: {err}".splitlines()[0]) from err
    # a quantizer left on the model would make the copy load as quantized (or not save)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    config_file = dest / "config.json"
    config = json.loads(config_file.read_text())
    if config.pop("quantization_config", None) is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def materialize_gguf(folder: str | Path, gguf_file: str, cache_dir: str | Path) -> Path:
    """A plain Hugging Face folder (config.json, model.safetensors in float32, tokenizer
    files with the chat template) holding the dequantized `folder/gguf_file`; converted on
    the first call and cached under `cache_dir/models/<first 16 hex of its sha256>/`.

    The folder appears by one atomic rename of a finished temporary sibling, so a killed
    conversion never leaves a folder that loads half a model, and processes converting at
    once (DDP ranks) each end up with one complete copy."""
    gguf = Path(folder).expanduser() / gguf_file
    if not gguf.is_file():
        raise ModelError(f"GGUF file not found: {gguf}; set model.gguf_file to a .gguf file "
                         "inside model.name_or_path")
    key = _key(gguf)
    models = Path(cache_dir).expanduser() / "models"
    target = models / key
    if target.is_dir():
        return target
    models.mkdir(parents=True, exist_ok=True)
    _remove_stale(models, key)
    tmp = models / f".{key}{_TMP}{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("converting GGUF %s to a float32 model once; cached at %s", gguf, target)
    try:
        _convert(gguf, tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a peer's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; junk after a failure
    return target
