"""Read records from wherever users keep them, each with the location an error message should name.

Supported: `.jsonl` (file:line), `.json` (a list of records, or a list under a key: file[index]),
`.csv` (file:line of the row), `.parquet` (file:row N), a folder written by
`datasets.save_to_disk` (folder:row N) and a hub dataset id (from the local cache only).
Problems that make a single record unreadable are collected, not raised, so that one pass can
report all of them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError, where

READABLE = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


@dataclass
class Row:
    record: dict[str, Any]
    location: str  # `file:line`, `file[index]` or `file:row N`


def read_rows(path: str, problems: list[str], *, key: str | None = None, split: str = "train") -> list[Row]:
    """All records of one source; unreadable ones go to `problems` as `location: what is wrong`."""
    p = Path(path).expanduser()
    if p.is_dir():
        return _read_saved_dataset(p, split)
    if p.suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl(p, problems)
    elif p.suffix == ".json":
        rows = _read_json(p, key)
    elif p.suffix == ".csv":
        rows = _read_csv(p, problems)
    elif p.suffix == ".parquet":
        rows = _read_parquet(p)
    elif p.exists():
        raise UserError(
            f"{p}: unsupported file type '{p.suffix}' (use {', '.join(READABLE)} or a saved dataset folder)"
        )
    elif p.suffix or "/" not in path or path.startswith((".", "/", "~")):
        raise UserError(f"{p}: data file not found")
    else:
        return _read_hub_dataset(path, split)
    if not rows and not problems:
        raise UserError(f"{p}: no records (empty file)")
    return rows


def _check_file(p: Path) -> None:
    if not p.is_file():
        raise UserError(f"{p}: data file not found")


def _read_jsonl(p: Path, problems: list[str]) -> list[Row]:
    _check_file(p)
    rows = []
    with p.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"{where(p, n)}: invalid UTF-8 at byte {e.start}")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{where(p, n)}: invalid JSON: {e.msg} (column {e.colno})")
                continue
            except RecursionError:
                problems.append(f"{where(p, n)}: JSON nested too deeply to be a record")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{where(p, n)}: expected a JSON object, got {type(obj).__name__}")
                continue
            if (bad := _invalid_text(obj)) is not None:
                problems.append(f"{where(p, n)}: {bad}")
                continue
            rows.append(Row(obj, where(p, n)))
    return rows


def _decode(p: Path) -> str:
    _check_file(p)
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{where(p, line)}: invalid UTF-8 at byte {e.start}") from None


def _read_json(p: Path, key: str | None) -> list[Row]:
    text = _decode(p)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where(p, e.lineno)}: invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise UserError(f"{p}: JSON nested too deeply to hold records") from None
    if isinstance(data, dict):
        if key is None:
            lists = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
            if len(lists) != 1:
                found = ", ".join(lists) or "none"
                raise UserError(
                    f"{p}: a JSON object of records needs `key:` naming the list of records (lists found: {found})"
                )
            key = lists[0]
        if not isinstance(data.get(key), list):
            raise UserError(f"{p}: key '{key}' is not a list of records")
        data, prefix = data[key], f"{p}[{key!r}]"
    elif isinstance(data, list):
        prefix = str(p)
    else:
        raise UserError(f"{p}: expected a JSON list of records, got {type(data).__name__}")
    rows = []
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise UserError(f"{prefix}[{i}]: expected a JSON object, got {type(obj).__name__}")
        if (bad := _invalid_text(obj)) is not None:
            raise UserError(f"{prefix}[{i}]: {bad}")
        rows.append(Row(obj, f"{prefix}[{i}]"))
    return rows


def _invalid_text(record: Any) -> str | None:
    """JSON may spell text that is not Unicode (an unpaired surrogate such as \\ud800); no
    tokenizer takes it, so it is a problem of the record, found here (walked without recursion)."""
    pending = [record]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"text with an unpaired surrogate ({value[e.start]!a}) is not valid Unicode"
    return None


def _read_csv(p: Path, problems: list[str]) -> list[Row]:
    text = _decode(p)
    reader = csv.DictReader(text.splitlines(keepends=True))
    if not reader.fieldnames:
        raise UserError(f"{p}: no records (empty file)")
    rows = []
    try:
        for record in reader:
            line = reader.line_num
            if None in record:  # more cells than header columns
                problems.append(f"{where(p, line)}: {len(record[None])} more cells than the header has columns")
                continue
            if any(v is None for v in record.values()):
                problems.append(f"{where(p, line)}: fewer cells than the header has columns")
                continue
            rows.append(Row(dict(record), where(p, line)))
    except csv.Error as e:
        raise UserError(f"{where(p, reader.line_num)}: invalid CSV: {e}") from None
    return rows


def _read_parquet(p: Path) -> list[Row]:
    _check_file(p)
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:
        raise UserError(f"{p}: not a readable Parquet file ({str(e).splitlines()[0][:160]})") from None
    return [Row(r, f"{p}:row {i + 1}") for i, r in enumerate(table.to_pylist())]


def _dataset_rows(dataset: Iterable[Mapping[str, Any]], label: str) -> list[Row]:
    return [Row(dict(r), f"{label}:row {i + 1}") for i, r in enumerate(dataset)]


def _pick_split(dataset: Any, label: str, split: str) -> Any:
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise UserError(f"{label}: no split '{split}' (splits: {', '.join(dataset)}); set `split:` on the source")
        return dataset[split]
    return dataset


def _read_saved_dataset(p: Path, split: str) -> list[Row]:
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(p))
    except Exception as e:
        raise UserError(
            f"{p}: folder is not a dataset saved with datasets.save_to_disk ({str(e).splitlines()[0][:160]})"
        ) from None
    rows = _dataset_rows(_pick_split(dataset, str(p), split), str(p))
    if not rows:
        raise UserError(f"{p}: no records (empty dataset)")
    return rows


def _read_hub_dataset(name: str, split: str) -> list[Row]:
    """A hub dataset from the local cache only: training data must not depend on the network."""
    import datasets

    datasets.config.HF_HUB_OFFLINE = True  # read from the cache; never wait on the network
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"{name}: no such local file, and not a hub dataset in the local cache ({reason})") from None
    return _dataset_rows(dataset, name)
