"""Raw splits (hub dataset or local files), subsets, and the cached tokenized features."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from sft.config import DataConfig
from sft.errors import DataError
from sft.tasks.base import Task

_READERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
EVAL_SPLITS = ("validation", "test")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_files(task: Task, data: DataConfig) -> dict[str, Path]:
    """The task's split files under data.dir; a clear error names a missing one."""
    assert data.dir is not None
    root = Path(data.dir).expanduser() / task.config.subdir
    files = {split: root / name for split, name in task.config.files.items()}
    for split, path in files.items():
        if not path.is_file():
            raise DataError(f"data file not found: {path} (task.files.{split}); set data.dir to "
                            f"the folder that holds '{task.config.subdir or path.name}'")
    return files


def _read_local(task: Task, path: Path, split: str) -> Dataset:
    custom = task.read_file(path, split)
    if custom is not None:
        return custom
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"cannot read {path}: unknown file type '{path.suffix}' "
                        f"(known: {', '.join(_READERS)})")
    if _row_count_at_most(path, 1 if reader == "csv" else 0):
        raise DataError(f"the {split} split is empty: {path} has no data rows")
    options: dict[str, Any] = {}
    if path.suffix.lower() == ".tsv":
        options = {"delimiter": "\t", "quoting": 3}  # QUOTE_NONE: GLUE TSVs hold raw quotes
    try:
        return datasets.load_dataset(reader, data_files={split: str(path)}, split=split, **options)
    except Exception as err:  # datasets raises many types for malformed files
        raise DataError(f"cannot read {path}: {str(err).splitlines()[0]}") from err


def _row_count_at_most(path: Path, limit: int) -> bool:
    """True when the text file has at most `limit` non-blank lines (a header and no rows)."""
    if path.suffix.lower() == ".parquet":
        return False
    seen = 0
    with open(path, errors="replace") as f:
        for line in f:
            seen += bool(line.strip())
            if seen > limit:
                return False
    return True


def _load_hub(task: Task) -> DatasetDict:
    hub = task.config.hub
    try:
        loaded = datasets.load_dataset(hub.path, hub.name)
    except Exception as err:
        raise DataError(
            f"cannot load hub dataset '{hub.path}' ({str(err).splitlines()[0]}); offline, point "
            "data.dir at local files (e.g. data.dir=../shared/data)"
        ) from err
    mapping = hub.splits or {s: s for s in loaded}
    return DatasetDict({ours: loaded[theirs] for ours, theirs in mapping.items() if theirs in loaded})


def load_splits(task: Task, data: DataConfig) -> DatasetDict:
    """Raw, label-checked splits: train, validation (carved from train if absent), test."""
    if data.dir:
        raw = DatasetDict({s: _read_local(task, p, s) for s, p in local_files(task, data).items()})
    else:
        raw = _load_hub(task)
    if "train" not in raw:
        raise DataError(f"task '{task.config.name}' has no train split (splits: {list(raw)})")
    if "validation" not in raw:
        carved = raw["train"].train_test_split(test_size=data.validation_fraction,
                                               seed=data.split_seed)
        raw["train"], raw["validation"] = carved["train"], carved["test"]
    for split, limit in [("train", data.max_train_samples),
                         *[(s, data.max_eval_samples) for s in EVAL_SPLITS]]:
        if split in raw and limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].shuffle(seed=data.split_seed).select(range(limit))
    for split in raw:
        if len(raw[split]) == 0:
            raise DataError(f"the {split} split of task '{task.config.name}' is empty; "
                            "check the data file or data.max_*_samples")
        raw[split] = task.prepare_split(raw[split], split)
    return raw


def featurize(task: Task, raw: DatasetDict, tokenizer_id: str, data: DataConfig) -> DatasetDict:
    """Tokenize every split once; the result is cached on disk under a key that hashes the
    tokenizer, the task config, data settings and the split's content fingerprint."""
    cache = Path(data.cache_dir).expanduser() / "features"
    cache.mkdir(parents=True, exist_ok=True)
    keep = set(task.feature_columns() or [])
    out = DatasetDict()
    for split, dataset in raw.items():
        key = hashlib.sha256(json.dumps(
            [tokenizer_id, asdict(task.config), data.max_length, dataset._fingerprint, split],
            sort_keys=True, default=str,
        ).encode()).hexdigest()[:24]
        out[split] = dataset.map(
            task.featurize, batched=True, desc=f"tokenize ({split})",
            remove_columns=[c for c in dataset.column_names if c not in keep],
            cache_file_name=str(cache / f"{task.config.name}-{split}-{key}.arrow"),
            new_fingerprint=key,
        )
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's full definition (vocab, normalizer, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(),
                                                                    sort_keys=True)
    extra = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256((text + extra).encode()).hexdigest()[:16]


def sequence_lengths(dataset: Dataset, column: str = "input_ids") -> list[int]:
    """Token count of every row, computed by Arrow on the cached column (a Python loop over
    67k rows takes seconds and would delay the first step of every launch)."""
    lengths = pc.list_value_length(dataset.with_format("arrow")[column])
    return lengths.to_pylist()
