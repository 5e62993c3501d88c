"""Prompts that a model answers (labelling, teacher replies), and the files their answers go to."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from tunesmith.errors import UserError

if TYPE_CHECKING:
    from pathlib import Path

    from tunesmith.data.layouts import Example


def prompt_of(example: Example) -> list[dict[str, Any]]:
    """The conversation a reply is wanted for: a prompt record as it is, otherwise everything
    before the last assistant turn."""
    messages = example.messages
    if messages is None:
        raise UserError(f"{example.source}: plain text has no prompt to answer; use prompt or chat records")
    if messages[-1]["role"] != "assistant":
        return messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def prompt_field(messages: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A single user turn is written as a string, like the records users write by hand."""
    return messages[0]["content"] if len(messages) == 1 and messages[0]["role"] == "user" else messages


def prompt_key(prompt: str | list[dict[str, Any]]) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def prompts_in(path: Path, writer: str) -> set[str]:
    """Keys of the prompts an output file already holds (a restarted run skips them). Refuses a
    file that `writer` did not write, rather than appending to someone else's data."""
    if not path.is_file():
        return set()
    done = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            done.add(prompt_key(json.loads(line)["prompt"]))
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}:{n}: not a record written by {writer}; choose another --out") from None
    return done


def append_durably(path: Path, records: list[dict[str, Any]]) -> None:
    """Whole lines in one write, on disk (fsync) before returning: a process killed after this
    loses none of them, and one killed during it leaves at most a partial last line."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
