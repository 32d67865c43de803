"""Batched text generation shared by every generative task and `sft generate`.

Prompts are sorted by length (little padding per batch), left-padded (a decoder-only model
continues from the last real token), and decoded with the task's explicit GenerationConfig;
the KV cache is on (it is off only while training)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.config.tasks import GenerationConfig
from sft.data.collate import batched

# end-of-turn markers of common chat templates: generation stops at any that is one token
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """eos plus every end-of-turn marker the vocabulary holds as a single token."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return ids + [vocab[t] for t in END_OF_TURN if t in vocab and vocab[t] not in ids]


def generation_kwargs(tokenizer: PreTrainedTokenizerBase, gen: GenerationConfig) -> dict[str, Any]:
    kwargs = asdict(gen)
    if not gen.do_sample:  # greedy/beam: sampling knobs would only trigger warnings
        kwargs.pop("temperature")
        kwargs.pop("top_p")
    if gen.num_beams == 1:
        kwargs.pop("early_stopping")
        kwargs.pop("length_penalty")
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    return {**kwargs, "eos_token_id": stops, "pad_token_id": pad}


@torch.inference_mode()
def generate_texts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   gen: GenerationConfig, batch_size: int = 8) -> list[dict[str, Any]]:
    """One result per prompt, in the prompts' order: {"generation", "new_tokens",
    "hit_max_new_tokens"}. The prompts are full rendered texts (chat template applied)."""
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    kwargs = generation_kwargs(tokenizer, gen)
    stops = set(kwargs["eos_token_id"])
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = [{} for _ in prompts]
    for chunk in batched(order, batch_size):
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), kwargs["pad_token_id"], dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):  # left padding
            ids[row, width - len(encoded[i]):] = torch.as_tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             use_cache=True, **kwargs)
        for row, i in enumerate(chunk):
            new = out[row, width:].tolist()
            ended = next((k for k, t in enumerate(new) if t in stops), None)
            kept = new if ended is None else new[:ended]
            results[i] = {"generation": tokenizer.decode(kept, skip_special_tokens=True),
                          "new_tokens": len(kept), "hit_max_new_tokens": ended is None
                          and len(new) >= gen.max_new_tokens}
    model.train(was_training)
    return results
