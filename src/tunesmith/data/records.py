"""Read SFT records from JSONL and validate each one before any training starts.

Accepted layouts: `messages` (OpenAI chat format: system/user/assistant turns) and
`prompt`/`completion`. Every problem is reported as `file:line: what is wrong`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError, where

ROLES = ("system", "user", "assistant")
MAX_LISTED = 5


@dataclass
class Example:
    """One validated conversation; `source` is `file:line` for messages about it."""

    messages: list[dict]
    source: str


def to_messages(record: dict) -> list[dict]:
    """A record in any accepted layout as chat messages; raises ValueError saying what is wrong."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list of {role, content} objects")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise ValueError(f"messages[{i}] is not an object")
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise ValueError(f"messages[{i}].role {role!r} not allowed (use one of: {', '.join(ROLES)})")
            if not isinstance(content, str):
                raise ValueError(f"messages[{i}].content must be a string, got {type(content).__name__}")
            if role == "system" and i != 0:
                raise ValueError(f"messages[{i}]: a system message may only come first")
            out.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in out):
            raise ValueError("no assistant turn to learn from")
        return out
    if "prompt" in record or "completion" in record:
        prompt, completion = record.get("prompt"), record.get("completion")
        for key, value in (("prompt", prompt), ("completion", completion)):
            if not isinstance(value, str):
                raise ValueError(f"'{key}' must be a string, got {type(value).__name__}")
        if not completion:
            raise ValueError("'completion' is empty: nothing to learn from")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    keys = ", ".join(sorted(record)) or "none"
    raise ValueError(f"unknown layout (keys: {keys}); expected 'messages' or 'prompt'/'completion'")


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; syntax and encoding errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found")
    if path.suffix not in (".jsonl", ".json", ".ndjson"):
        raise UserError(f"{path}: expected a .jsonl file")
    rows, problems = [], []
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"{where(path, n)}: invalid UTF-8 at byte {e.start}")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{where(path, n)}: invalid JSON: {e.msg} (column {e.colno})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{where(path, n)}: expected a JSON object, got {type(obj).__name__}")
                continue
            rows.append((n, obj))
    _raise_if(problems)
    if not rows:
        raise UserError(f"{path}: no records (empty file)")
    return rows


def load_examples(path: str | Path) -> list[Example]:
    """Validated examples from one JSONL file, or a UserError listing the first problems."""
    examples, problems = [], []
    for n, record in read_jsonl(path):
        try:
            examples.append(Example(to_messages(record), where(path, n)))
        except ValueError as e:
            problems.append(f"{where(path, n)}: {e}")
    _raise_if(problems)
    return examples


def _raise_if(problems: list[str]) -> None:
    if not problems:
        return
    more = len(problems) - 1
    suffix = f" (and {more} more bad line{'s' if more > 1 else ''}: {'; '.join(problems[1:MAX_LISTED])})" if more else ""
    raise UserError(problems[0] + suffix)
