"""Batched text generation shared by every generative task, their evaluation, `sft predict`
and `sft generate`.

Inputs are sorted by length (little padding per batch), left-padded for decoder-only models
(which continue from the last real token), and decoded with the task's explicit
GenerationConfig; the KV cache is on (it is off only while training)."""

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


def generation_kwargs(gen: GenerationConfig, stops: list[int], pad_id: int) -> dict[str, Any]:
    kwargs = asdict(gen)
    if not gen.do_sample:  # greedy/beam: sampling knobs would only trigger warnings
        kwargs.pop("temperature")
        kwargs.pop("top_p")
    if gen.num_beams == 1:
        kwargs.pop("early_stopping")
        kwargs.pop("length_penalty")
    return {**kwargs, "eos_token_id": stops, "pad_token_id": pad_id}


# no_grad, not inference_mode: under FSDP2 the parameters gathered here are reused in training
@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[list[int]],
             gen: GenerationConfig, stops: list[int], *, decoder_only: bool,
             batch_size: int = 8) -> list[dict[str, Any]]:
    """One result per row of token ids (a causal LM's prompt, or an encoder-decoder's source),
    in the rows' order: {"generation", "new_tokens", "hit_max_new_tokens"}."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    kwargs = generation_kwargs(gen, stops, pad_id)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = [{} for _ in rows]
    for chunk in batched(order, batch_size):
        width = max(len(rows[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            # a causal LM continues from the last position: its prompts are padded on the left
            start = width - len(rows[i]) if decoder_only else 0
            ids[row, start : start + len(rows[i])] = torch.as_tensor(rows[i])
            mask[row, start : start + len(rows[i])] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             use_cache=True, **kwargs)
        # skip the prompt, or the decoder's start token
        for i, result in zip(chunk, decode_new(tokenizer, out, width if decoder_only else 1,
                                               stops, gen.max_new_tokens), strict=True):
            results[i] = result
    model.train(was_training)
    return results


def decode_new(tokenizer: PreTrainedTokenizerBase, sequences: torch.Tensor, skip: int,
               stops: list[int], max_new_tokens: int) -> list[dict[str, Any]]:
    """The text each row generated after its first `skip` positions, up to its first stop."""
    results = []
    for row in sequences[:, skip:].tolist():
        ended = next((k for k, t in enumerate(row) if t in stops), None)
        kept = row if ended is None else row[:ended]
        results.append({"generation": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                        "new_tokens": len(kept),
                        "hit_max_new_tokens": ended is None and len(row) >= max_new_tokens})
    return results


def generate_texts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   gen: GenerationConfig, batch_size: int = 8) -> list[dict[str, Any]]:
    """Continuations of rendered prompts (chat template applied) by a causal LM."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return generate(model, tokenizer, rows, gen, stop_token_ids(tokenizer), decoder_only=True,
                    batch_size=batch_size)
