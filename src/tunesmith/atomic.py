"""Files that are whole or absent: written beside their place under a temporary name, then renamed
over it (one atomic step on POSIX), so a process killed mid-write leaves the old file or none."""

from __future__ import annotations

import os
from pathlib import Path


def temp_name(path: Path) -> Path:
    """The hidden temporary beside `path`, unique to this process (so two never collide)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_temp_of(candidate: Path, name: str) -> bool:
    """Whether `candidate` is what a process killed while writing `name` left behind."""
    return candidate.name.startswith(f".{name}.") and candidate.name.endswith(".tmp")


def write_text(path: Path, text: str) -> None:
    tmp = temp_name(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
