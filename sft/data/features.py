"""Tokenized features, cached on disk under a key that cannot go stale: it hashes the
tokenizer (vocabulary, normalizer, special tokens, chat template), the task config, the
task's features version and what else its features depend on (e.g. the model kind), the
data settings and the split's content fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from sft.config.schema import DataConfig
from sft.errors import DataError

log = logging.getLogger("sft")


class Featurizer(Protocol):
    """What featurizing needs of a task plug-in (sft.tasks.base.Task)."""

    config: Any  # a TaskConfig
    tokenizer: Any
    features_version: int  # bumped whenever the task's featurize() output changes

    def featurize(self, rows: dict[str, list]) -> dict[str, list]: ...

    def feature_columns(self) -> list[str] | None: ...

    def features_depend_on(self) -> Any: ...


def cache_key(task: Featurizer, tokenizer_id: str, dataset: Dataset, split: str,
              data: DataConfig) -> str:
    parts = [tokenizer_id, getattr(task.tokenizer, "chat_template", None), task.features_version,
             asdict(task.config), task.features_depend_on(), data.max_length,
             dataset._fingerprint, split]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def featurize(task: Featurizer, raw: DatasetDict, data: DataConfig) -> DatasetDict:
    """Tokenize every split once; later launches load the cached Arrow files."""
    cache = Path(data.cache_dir).expanduser() / "features"
    cache.mkdir(parents=True, exist_ok=True)
    keep = set(task.feature_columns() or [])
    tokenizer_id = tokenizer_fingerprint(task.tokenizer)
    out = DatasetDict()
    for split, dataset in raw.items():
        key = cache_key(task, tokenizer_id, dataset, split, data)
        out[split] = dataset.map(
            task.featurize, batched=True, desc=f"tokenize ({split})",
            remove_columns=[c for c in dataset.column_names if c not in keep],
            cache_file_name=str(cache / f"{task.config.name}-{split}-{key}.arrow"),
            new_fingerprint=key,
        )
        dropped = len(dataset) - len(out[split])
        if dropped:  # featurize() may drop rows it cannot train on; say so, never silently
            reason = getattr(task, "drop_reason", "dropped by the task")
            if not len(out[split]):
                raise DataError(f"every record of the {split} split was dropped ({reason}); "
                                "raise data.max_length or fix the data")
            log.warning("%s: %d of %d records dropped (%s)", split, dropped, len(dataset), reason)
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's full definition (vocab, normalizer, special tokens). The
    backend's truncation and padding are left out: they are state that the last call set."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        text = json.dumps(definition, sort_keys=True)
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256((text + extra).encode()).hexdigest()[:16]


def sequence_lengths(dataset: Dataset, column: str = "input_ids") -> list[int]:
    """Token count of every row, computed by Arrow on the cached column (a Python loop over
    67k rows takes seconds and would delay the first step of every launch)."""
    lengths = pc.list_value_length(dataset.with_format("arrow")[column])
    return lengths.to_pylist()
