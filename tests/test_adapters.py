"""LoRA adapters (adapter=lora, through peft) on tiny models and the real data: what trains,
what a checkpoint holds, exact resume, best/ and `sft export` as plain transformers models
(the tied-head trap included), every task family, and the mistakes a user can make."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, kill_at_checkpoint, results, run_cli, short_args, train_tiny
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, BertConfig, BertForSequenceClassification, pipeline

from sft.cli import main
from sft.config.compose import load_run
from sft.config.schema import AdapterConfig
from sft.models.adapters import attach
from sft.models.cls_only import restrict_last_layer_to_cls
from sft.models.loading import load_tokenizer
from sft.run.model import adapted_model, saved_model
from sft.tasks import build_task
from sft.train.checkpoint import verify
from tests.test_errors import assert_one_line, in_process  # noqa: F401 (a fixture)

LORA = ["adapter=lora", "optimizer.lr=1e-2"]  # a random tiny base: a high rate to see it move
SST2 = ["data.max_train_samples=128", "data.max_eval_samples=32", "trainer.batch_size=16",
        "trainer.max_steps=8", "trainer.eval_steps=4"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    return train_tiny(run_dir, data_dir, cache_dir, *SST2, *LORA)


def test_a_lora_run_trains_a_few_percent_and_checkpoints_only_what_changed(lora_run: Path) -> None:
    final = json.loads((lora_run / "metrics.json").read_text())
    assert 0 < final["params/trainable"] < 0.05 * final["params/total"]
    assert f"parameters: {final['params/trainable']:,} trainable" in (lora_run / "train.log").read_text()
    step = lora_run / "checkpoints/step-8"
    assert not list(step.glob("model*.safetensors"))  # no frozen base weights
    saved = load_file(step / "adapter_model.safetensors")
    assert saved and all("lora_" in k or ".classifier." in k for k in saved), list(saved)[:5]
    assert any(".classifier." in k for k in saved)  # the head trains in full
    manifest = json.loads((step / "manifest.json").read_text())["files"]
    assert {"adapter_model.safetensors", "adapter_config.json", "trainer_state.pt"} <= manifest.keys()
    assert verify(step) is None


def test_best_is_a_merged_model_that_transformers_pipelines_load(lora_run: Path, in_process: None,  # noqa: F811
                                                                 capsys: pytest.CaptureFixture) -> None:
    best = lora_run / "best"
    assert (best / "model.safetensors").is_file() and (best / "adapter/adapter_config.json").is_file()
    classify = pipeline("text-classification", model=str(best), device="cpu")
    labels = {r["label"] for r in classify(["a gorgeous, witty film", "dull and lifeless"])}
    assert labels <= {"negative", "positive"}
    # the merged best/ scores exactly what the adapter model scored during training
    assert main(["eval", str(lora_run)]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    final = json.loads((lora_run / "metrics.json").read_text())
    assert evaluated["validation/loss"] == pytest.approx(final["validation/loss"], abs=1e-5)
    assert evaluated["validation/accuracy"] == final["validation/accuracy"]


def test_a_lora_run_killed_and_resumed_equals_an_uninterrupted_one(
        tmp_path: Path, data_dir: Path, cache_dir: Path) -> None:
    argv = [*short_args(data_dir, cache_dir), "adapter=lora"]
    reference = tmp_path / "ref"
    assert main(["train", *argv, f"run_dir={reference}"]) == 0
    run_dir = tmp_path / "killed"
    kill_at_checkpoint([*argv, f"run_dir={run_dir}"], run_dir, 6)
    assert main(["train", f"resume={run_dir}"]) == 0
    assert results(run_dir) == results(reference)
    assert (run_dir / "best/adapter/adapter_model.safetensors").is_file()


# -- export: a causal LM whose trained head was tied to its embeddings ---------------------
LM = ["task=instruction", "model=tiny-llama", "hardware=cpu", "trainer.progress=false",
      "data.max_length=128", "data.max_train_samples=32", "data.max_eval_samples=8",
      "trainer.batch_size=4", "trainer.max_steps=4", "trainer.eval_steps=4",
      "task.num_samples=1", "task.generation.max_new_tokens=4"]


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("tied") / "run"
    assert main(["train", *LM, *LORA, "adapter.modules_to_save=[lm_head]",
                 "adapter.merge_best=false", f"data.dir={data_dir}",
                 f"data.cache_dir={cache_dir}", f"run_dir={run_dir}"]) == 0
    return run_dir


def test_merged_export_keeps_a_trained_tied_head_after_a_reload(tied_run: Path, tmp_path: Path,
                                                               in_process: None) -> None:  # noqa: F811
    best = tied_run / "best"
    assert (best / "adapter_config.json").is_file() and not (best / "model.safetensors").exists()
    assert main(["export", str(tied_run), "--merge", "--output", str(tmp_path / "merged")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not torch.equal(exported.lm_head.weight, exported.model.embed_tokens.weight)
    run = load_run(tied_run)
    tokenizer = load_tokenizer(saved_model(run.model, best))
    adapted = adapted_model(run, tied_run, build_task(run.task, tokenizer, run.data, run.model), best)
    ids = tokenizer(["Name three primary colours.", "Translate: good morning"], padding=True,
                    return_tensors="pt")
    with torch.no_grad():
        expected = adapted(**ids).logits
        got = exported(**ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert (tmp_path / "merged/chat_template.jinja").is_file()
    assert (tmp_path / "merged/generation_config.json").is_file()
    # without --merge: the adapter folder, which peft loads onto the base
    assert main(["export", str(tied_run), "--output", str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter/adapter_model.safetensors").is_file()


def test_generate_works_on_an_unmerged_adapter_run(tied_run: Path, in_process: None,  # noqa: F811
                                                   capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", str(tied_run), "--prompt", "Say hi", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()


# -- every task family -------------------------------------------------------------------
FAMILIES = {
    "ner": ["task=ner", "data.max_train_samples=48", "data.max_eval_samples=16"],
    "qa": ["task=qa", "data.max_train_samples=32", "data.max_eval_samples=16",
           "data.max_length=128", "task.doc_stride=32"],
    "summarization": ["task=summarization", "model=tiny-t5", "data.max_train_samples=32",
                      "data.max_eval_samples=8", "task.generation.max_new_tokens=8"],
    "bert2bert": ["task=translation", "model=bert2bert-minilm", "data.max_train_samples=16",
                  "data.max_eval_samples=4", "task.generation.max_new_tokens=4"],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_trains_every_task_family(family: str, tmp_path: Path, data_dir: Path,
                                       cache_dir: Path) -> None:
    run_dir = train_tiny(tmp_path / "run", data_dir, cache_dir, *FAMILIES[family], *LORA,
                         "trainer.batch_size=8", "trainer.max_steps=6", "trainer.eval_steps=3",
                         "trainer.eval_first=true")
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "validation"]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["params/trainable"] < 0.1 * final["params/total"]
    assert (run_dir / "best/model.safetensors").is_file()
    assert not list((run_dir / "checkpoints/step-6").glob("model*.safetensors"))


# -- how LoRA composes with freezing and the [CLS]-only last layer ------------------------
def tiny_classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


def test_freeze_layers_keeps_lora_out_of_the_frozen_layers() -> None:
    model = attach(tiny_classifier(), AdapterConfig(type="lora", r=4), freeze_layers=2)
    adapted = {n.split(".layer.")[1].split(".")[0] for n, p in model.named_parameters()
               if "lora_" in n and ".layer." in n}
    assert adapted == {"2"}  # the pooler (outside the layers) keeps its adapter
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "classifier" in n for n in trained)


def test_cls_only_last_layer_gives_the_same_logits_under_lora() -> None:
    model = attach(tiny_classifier(), AdapterConfig(type="lora", r=4, dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter change the output
            torch.nn.init.normal_(param, std=0.5)
    ids = torch.randint(5, 100, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        assert restrict_last_layer_to_cls(model.get_base_model())
        first_only = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(first_only, full, atol=1e-5)


# -- mistakes: one line, exit 2 ----------------------------------------------------------
@pytest.mark.parametrize(("override", "expected"), [
    ("adapter.target_modules=[qkv]", "entry 'qkv' matches no layer of model 'bert'; its layers "
                                     "are named: classifier, dense, key"),
    ("adapter.r=0", "adapter.r must be >= 1, got 0"),
    ("adapter=qlora", "needs a CUDA GPU; on this machine use adapter=lora"),
])
def test_adapter_mistakes_are_one_line(override: str, expected: str, tmp_path: Path,
                                       data_dir: Path, cache_dir: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("train", "model=tiny-bert", "hardware=cpu", "trainer.progress=false",
                     f"data.dir={data_dir}", f"data.cache_dir={cache_dir}", "adapter=lora",
                     override, f"run_dir={run_dir}")
    assert_one_line(result.returncode, result.stdout, result.stderr, expected, run_dir)


def test_an_adapter_is_not_exported_onto_another_base(lora_run: Path, tmp_path: Path,
                                                      in_process: None,  # noqa: F811
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    base = Path(load_run(lora_run).model.name_or_path)
    other = tmp_path / "other-base"
    shutil.copytree(base, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    output = tmp_path / "export"
    code = main(["export", str(lora_run), "--merge", "--output", str(output),
                 f"model.name_or_path={other}"])
    out, err = capfd.readouterr()
    assert_one_line(code, out, err, "was trained on another base than", output)


def test_the_adapter_bench_runs_in_its_quick_form(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "scripts/bench_adapters.py"), "--quick",
                             "--data-dir", str(data_dir), "--json", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    numbers = json.loads(out.read_text())
    assert set(numbers) == {"minilm full", "minilm lora", "smollm2 full", "smollm2 lora"}
    for model in ("minilm", "smollm2"):
        full, lora = numbers[f"{model} full"], numbers[f"{model} lora"]
        assert lora["trainable"] < 0.1 * full["trainable"]
        assert full["total"] < lora["total"] < 1.1 * full["total"]  # the base + the adapter
        assert full["peak_rss_mb"] > 0 and lora["samples_per_s"] > 0
    assert numbers["smollm2 lora"]["before"] is not None  # the baseline loss before step 0
    assert "LoRA/full speed" in result.stdout
