"""Raw splits: a hub dataset or local files, a carved validation split, fixed-seed subsets,
and cross-validation folds (data.folds / data.fold)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

import datasets
from datasets import Dataset, DatasetDict

from sft.config.schema import DataConfig, TaskConfig
from sft.data.folds import select_fold
from sft.errors import DataError

_READERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
EVAL_SPLITS = ("validation", "test")


class SplitReader(Protocol):
    """What loading needs of a task plug-in (sft.tasks.base.Task)."""

    config: Any  # a TaskConfig

    def read_file(self, path: Path, split: str) -> Dataset | None: ...

    def prepare_split(self, dataset: Dataset, split: str) -> Dataset: ...


def local_files(task: TaskConfig, data: DataConfig) -> dict[str, Path]:
    """The task's split files under data.dir; a clear error names a missing one."""
    assert data.dir is not None
    root = Path(data.dir).expanduser() / task.subdir
    files = {split: root / name for split, name in task.files.items()}
    for split, path in files.items():
        if not path.is_file():
            raise DataError(f"data file not found: {path} (task.files.{split}); set data.dir to "
                            f"the folder that holds '{task.subdir or path.name}'")
    return files


def _read_local(task: SplitReader, path: Path, split: str) -> Dataset:
    try:
        custom = task.read_file(path, split)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:  # a task's own reader (CoNLL, SQuAD)
        raise DataError(unreadable(path, err)) from err
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
    # datasets logs "Failed to read file ..." before raising; our one line below says it better
    quiet, level = logging.getLogger("datasets"), logging.getLogger("datasets").level
    quiet.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(reader, data_files={split: str(path)}, split=split, **options)
    except Exception as err:  # datasets raises many types for malformed files
        raise DataError(unreadable(path, err)) from err
    finally:
        quiet.setLevel(level)


def unreadable(path: Path, err: BaseException) -> str:
    """Why a data file could not be read, as precisely as the file tells: binary content,
    the first byte that is not UTF-8, else the innermost error (datasets wraps the real one
    in "An error occurred while generating the dataset")."""
    kind = path.suffix.lstrip(".").upper() or "text"
    with open(path, "rb") as f:
        head = f.read(8192)
    if (nul := head.find(b"\0")) >= 0:  # text formats never hold NUL bytes
        return (f"{path} is not a {kind} file: it holds binary data (a NUL byte at byte {nul}); "
                "point task.files at the text file")
    bad = first_non_utf8(path)
    if bad is not None:
        offset, line, byte = bad
        return (f"{path} is not UTF-8 at byte offset {offset} (line {line}: byte 0x{byte:02x}); "
                "save it as UTF-8 (from Latin-1: `iconv -f latin1 -t utf-8 OLD > NEW`)")
    while err.__cause__ is not None:
        err = err.__cause__
    return f"cannot read {path}: {(str(err).splitlines() or [type(err).__name__])[0]}"


def first_non_utf8(path: Path, chunk: int = 1 << 20) -> tuple[int, int, int] | None:
    """(byte offset, line number, byte) of the first byte that is not UTF-8, or None.
    Read in chunks: a sequence cut by a chunk's end is carried into the next."""
    offset, lines, carry = 0, 1, b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            data, carry = carry + block, b""
            try:
                data.decode("utf-8")
                good = len(data)
            except UnicodeDecodeError as err:
                if err.end < len(data) or len(data) - err.start >= 4:
                    good = err.start
                    return offset + good, lines + data.count(b"\n", 0, good), data[good]
                good, carry = err.start, data[err.start:]  # may complete in the next block
            offset, lines = offset + good, lines + data.count(b"\n", 0, good)
    return (offset, lines, carry[0]) if carry else None  # cut off by the end of the file


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


def _load_hub(task: TaskConfig) -> DatasetDict:
    hub = task.hub
    try:
        loaded = datasets.load_dataset(hub.path, hub.name)
    except Exception as err:
        raise DataError(
            f"cannot load hub dataset '{hub.path}' ({str(err).splitlines()[0]}); offline, point "
            "data.dir at local files (e.g. data.dir=../shared/data)"
        ) from err
    mapping = hub.splits or {s: s for s in loaded}
    return DatasetDict({ours: loaded[theirs] for ours, theirs in mapping.items() if theirs in loaded})


def load_splits(task: SplitReader, data: DataConfig) -> DatasetDict:
    """Raw, label-checked splits: train, validation (carved from train if absent), test;
    with data.folds, train+validation pooled and split into fold data.fold."""
    config: TaskConfig = task.config
    if data.dir:
        raw = DatasetDict({s: _read_local(task, p, s) for s, p in local_files(config, data).items()})
    else:
        raw = _load_hub(config)
    if "train" not in raw:
        raise DataError(f"task '{config.name}' has no train split (splits: {list(raw)})")
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
            raise DataError(f"the {split} split of task '{config.name}' is empty; "
                            "check the data file or data.max_*_samples")
        raw[split] = task.prepare_split(raw[split], split)
    if data.folds is not None and data.fold is not None:
        raw = select_fold(raw, data.folds, data.fold, data.split_seed)
    return raw
