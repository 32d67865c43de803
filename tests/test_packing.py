"""Packing causal-LM documents into shared rows: the plan, the collation, and that packed
documents stay apart in the model (losses, logits and gradients equal to running them alone),
plus the transformers 5 traps where they silently do not and check_isolation must refuse."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from sft.data.packing import IGNORE, check_isolation, pack_columns, plan_rows
from sft.errors import ConfigError

VOCAB = 128
IMPLS = ["sdpa", "eager"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: a tiny forward takes 5 ms instead of 500 on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- plan_rows

def naive_bfd(lengths: list[int], order: list[int], capacity: int) -> list[list[int]]:
    """The textbook O(docs x rows) best-fit-decreasing, the reference for the bucketed one."""
    rows: list[list[int]] = []
    rooms: list[int] = []
    for doc in sorted(order, key=lambda i: -lengths[i]):
        fits = [r for r in range(len(rows)) if rooms[r] >= lengths[doc]]
        if fits:
            best = min(fits, key=lambda r: (rooms[r], r))
        else:
            best = len(rows)
            rows.append([])
            rooms.append(capacity)
        rows[best].append(doc)
        rooms[best] -= lengths[doc]
    return rows


def test_plan_rows_fits_capacity_and_uses_every_document_once() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(2000)]
    order = list(range(len(lengths)))
    rng.shuffle(order)
    rows = plan_rows(lengths, order, 512)
    assert all(sum(lengths[d] for d in row) <= 512 for row in rows)
    assert sorted(d for row in rows for d in row) == list(range(len(lengths)))
    # best-fit packs tightly: within a few percent of the bound sum/capacity
    assert len(rows) <= 1.03 * sum(lengths) / 512 + 1


def test_plan_rows_is_best_fit_decreasing() -> None:
    rng = random.Random(1)
    for _ in range(20):
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(1, 120))]
        order = list(range(len(lengths)))
        rng.shuffle(order)
        assert plan_rows(lengths, order, 64) == naive_bfd(lengths, order, 64)


def test_plan_rows_ties_keep_the_given_order() -> None:
    lengths = [3, 3, 3, 3]
    assert plan_rows(lengths, [0, 1, 2, 3], 6) == [[0, 1], [2, 3]]
    assert plan_rows(lengths, [2, 0, 3, 1], 6) == [[2, 0], [3, 1]]


def test_plan_rows_row_count_does_not_depend_on_the_shuffle() -> None:
    rng = random.Random(2)
    lengths = [rng.choice([5, 17, 64, 100, 250, 256, 400]) for _ in range(3000)]
    counts, pairings = set(), set()
    for seed in range(5):
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
        rows = plan_rows(lengths, order, 512)
        counts.add(len(rows))
        pairings.add(tuple(tuple(r) for r in rows))
    assert len(counts) == 1
    assert len(pairings) == 5  # the shuffle does change which documents share a row


def test_plan_rows_packs_67k_documents_within_capacity() -> None:
    """SST-2-sized input (speed is measured by the bench scripts, never asserted here)."""
    rng = random.Random(3)
    lengths = [min(2048, int(rng.lognormvariate(5.5, 0.8)) + 1) for _ in range(67_000)]
    order = list(range(len(lengths)))
    rng.shuffle(order)
    rows = plan_rows(lengths, order, 2048)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 2048 for r in rows)


def test_plan_rows_rejects_documents_longer_than_a_row() -> None:
    with pytest.raises(ValueError, match="more than the row capacity 8"):
        plan_rows([3, 9, 2], [0, 1, 2], 8)
    with pytest.raises(ValueError, match="empty"):
        plan_rows([3, 0], [0, 1], 8)
    assert plan_rows([], [], 8) == []


# ---------------------------------------------------------------- pack_columns

def shifted(ids: list[int]) -> list[int]:
    """The feature convention: labels[i] is the target at position i, the last one -100."""
    return ids[1:] + [IGNORE]


def test_pack_columns_rows_positions_and_padding() -> None:
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    batch = pack_columns({"input_ids": docs, "labels": [shifted(d) for d in docs], "length": [0] * 4},
                         [2, 2], pad_id=0, pad_to_multiple_of=8)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask: it would leak
    assert all(t.dtype == torch.long and t.shape == (2, 8) for t in batch.values())
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 10, 0, 0, 0]]
    assert batch["labels"].tolist() == [[2, 3, -100, 5, -100, -100, -100, -100],
                                        [7, 8, 9, -100, -100, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 3, 0, 0, 1, 2]]


def test_pack_columns_width_is_the_longest_row_without_a_multiple() -> None:
    docs = [[1, 2, 3], [4], [5]]
    batch = pack_columns({"input_ids": docs, "labels": [shifted(d) for d in docs]}, [1, 2], pad_id=7)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 7]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_pack_columns_rejects_mismatches_and_unshifted_labels() -> None:
    docs = [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="row_sizes cover 3"):
        pack_columns({"input_ids": docs, "labels": [shifted(d) for d in docs]}, [2, 1], pad_id=0)
    with pytest.raises(ValueError, match="last label must be -100"):
        pack_columns({"input_ids": docs, "labels": docs}, [2], pad_id=0)  # HF-style, unshifted


# ---------------------------------------------------------------- the model

def tiny(impl: str, cls: type = LlamaForCausalLM) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=512, attn_implementation=impl)
    model = cls(config).float()
    assert model.config._attn_implementation == impl
    return model


def documents(lengths: list[int], seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(VOCAB, (n,), generator=generator).tolist() for n in lengths]


def packed_batch(docs: list[list[int]], capacity: int) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """Plan and pack like the trainer would; returns the batch and the rows of document indices."""
    rows = plan_rows([len(d) for d in docs], list(range(len(docs))), capacity)
    ordered = [docs[i] for row in rows for i in row]
    batch = pack_columns({"input_ids": ordered, "labels": [shifted(d) for d in ordered]},
                         [len(r) for r in rows], pad_id=0, pad_to_multiple_of=4)
    return batch, rows


def spans(rows: list[list[int]], docs: list[list[int]]) -> dict[int, tuple[int, slice]]:
    """Document index -> (row, slice of its positions in the packed batch)."""
    out = {}
    for r, row in enumerate(rows):
        start = 0
        for d in row:
            out[d] = (r, slice(start, start + len(docs[d])))
            start += len(docs[d])
    return out


def forward_packed(model: LlamaForCausalLM, batch: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **kwargs).logits


def forward_alone(model: LlamaForCausalLM, doc: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([doc]), use_cache=False).logits[0]


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The instruction loss: labels are shifted already, so no further shift."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


# 2 rows of capacity 16, several documents each: [7, 5, 3] + 1 pad and [6, 4, 3, 2] + 1 pad
LENGTHS = [7, 6, 5, 4, 3, 3, 2]


def test_the_plan_puts_several_documents_in_each_of_two_rows() -> None:
    _, rows = packed_batch(documents(LENGTHS), 16)
    assert len(rows) == 2 and all(len(r) >= 3 for r in rows)


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_losses_equal_documents_run_one_by_one(impl: str) -> None:
    model = tiny(impl).eval()
    docs = documents(LENGTHS)
    batch, rows = packed_batch(docs, 16)
    with torch.no_grad():
        logits = forward_packed(model, batch, use_cache=False)
        for d, (r, where) in spans(rows, docs).items():
            packed = loss_sum(logits[r, where], batch["labels"][r, where])
            alone = loss_sum(forward_alone(model, docs[d]), torch.tensor(shifted(docs[d])))
            torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(logits[r, where], forward_alone(model, docs[d]), atol=1e-5, rtol=0)
        # the tail padding trains nothing
        assert (batch["labels"][batch["input_ids"] == 0] == IGNORE).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_changing_one_document_leaves_its_row_neighbours_unchanged(impl: str) -> None:
    model = tiny(impl).eval()
    docs = documents(LENGTHS)
    batch, rows = packed_batch(docs, 16)
    where = spans(rows, docs)
    first, second = rows[0][0], rows[0][1]
    r, a = where[first]
    _, b = where[second]
    perturbed = {k: v.clone() for k, v in batch.items()}
    perturbed["input_ids"][r, a] = (perturbed["input_ids"][r, a] + 1) % VOCAB
    with torch.no_grad():
        before = forward_packed(model, batch, use_cache=False)
        after = forward_packed(model, perturbed, use_cache=False)
    assert (after[r, a] - before[r, a]).abs().max() > 1e-2  # the perturbation does change A
    torch.testing.assert_close(after[r, b], before[r, b], atol=1e-6, rtol=0)
    torch.testing.assert_close(after[1 - r], before[1 - r], atol=1e-6, rtol=0)  # and not the other row


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_gradients_equal_unpacked_gradients(impl: str) -> None:
    model = tiny(impl).train()
    docs = documents(LENGTHS)
    batch, _ = packed_batch(docs, 16)
    loss_sum(forward_packed(model, batch, use_cache=False), batch["labels"]).backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for doc in docs:
        loss_sum(forward_alone(model, doc), torch.tensor(shifted(doc))).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(packed[name], param.grad, atol=1e-5, rtol=0, msg=name)


# ---------------------------------------------------------------- the traps

def leak(model: LlamaForCausalLM, **kwargs) -> float:
    """Largest logit difference between packed documents and the same documents alone."""
    docs = documents(LENGTHS)
    batch, rows = packed_batch(docs, 16)
    with torch.no_grad():
        logits = forward_packed(model, batch, **kwargs)
        return max((logits[r, where] - forward_alone(model, docs[d])).abs().max().item()
                   for d, (r, where) in spans(rows, docs).items())


@pytest.mark.parametrize("impl", IMPLS)
def test_transformers_isolates_packed_rows_only_without_cache_and_2d_mask(impl: str) -> None:
    model = tiny(impl).eval()
    ones = torch.ones(2, 16, dtype=torch.long)
    assert model.config.use_cache is True  # the default: a forward without use_cache=False gets a cache
    assert leak(model, use_cache=False) < 1e-5
    assert leak(model) > 1e-2  # a cache: plain causal mask over the whole row
    assert leak(model, use_cache=False, attention_mask=ones) > 1e-2  # a 2-D mask: packing ignored


class CachedForward(LlamaForCausalLM):
    """A model (or wrapper) that forwards with the config's default use_cache=True."""

    def forward(self, *args, **kwargs):
        kwargs["use_cache"] = True
        return super().forward(*args, **kwargs)


class OnesMaskForward(LlamaForCausalLM):
    """A collator or wrapper that adds the usual all-ones attention_mask next to position_ids."""

    def forward(self, *args, **kwargs):
        kwargs["attention_mask"] = torch.ones_like(kwargs["input_ids"])
        return super().forward(*args, **kwargs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls", [CachedForward, OnesMaskForward])
def test_check_isolation_refuses_leaking_forwards(impl: str, cls: type) -> None:
    model = tiny(impl, cls)
    with pytest.raises(ConfigError) as caught:
        check_isolation(model, torch.device("cpu"))
    message = str(caught.value)
    assert "\n" not in message
    assert f"attn_implementation={impl} (model type llama)" in message
    assert "trainer.batching=tokens" in message
    assert model.training  # restored even when it raises


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("training", [True, False])
def test_check_isolation_passes_the_correct_path_and_restores_state(impl: str, training: bool) -> None:
    model = tiny(impl).train(training)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    check_isolation(model, "cpu")
    assert model.training is training
    assert torch.equal(torch.rand(1), expected)  # the probe leaves the global RNG alone
    assert all(p.grad is None for p in model.parameters())
