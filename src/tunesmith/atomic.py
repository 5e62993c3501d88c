"""Files that are whole or absent: written beside their place under a temporary name, then renamed
over it (one atomic step on POSIX), so a process killed mid-write leaves the old file or none."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def temp_name(path: Path) -> Path:
    """The hidden temporary beside `path`, unique to this process (so two never collide)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_temp_of(candidate: Path, name: str) -> bool:
    """Whether `candidate` is what a process killed while writing `name` left behind."""
    return candidate.name.startswith(f".{name}.") and candidate.name.endswith(".tmp")


def write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a path of its own (a figure, a
    safetensors file, a stream of lines): renamed over `path` when the block ends without an
    error, removed otherwise. The temporary's suffix is not `path`'s: say the format to writers
    that guess it from the name."""
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def folder(target: Path) -> Iterator[Path]:
    """A folder written whole or not at all: the block fills the temporary folder this yields
    (beside `target`, not yet created); when it ends without an error the folder replaces `target`
    (absent or empty) by one rename, and on any error it is removed."""
    tmp = target.parent / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if target.exists():
            target.rmdir()
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
