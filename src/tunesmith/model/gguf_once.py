"""Each GGUF file's metadata parsed once while a conversion runs.

transformers reads a GGUF file's metadata anew for the config, for the tokenizer and for the
weights, and the conversion reads it once more for its source note: four parses. gguf's reader
parses every field, the vocabulary token by token, which for Gemma 3's 262,144 tokens is about
12 s a parse, most of the conversion. Within `parsed_once()` the readers of one file are one
reader: a reader only reads, and the file does not change while it converts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()  # one conversion at a time in a process swaps gguf's reader in and out


@contextlib.contextmanager
def parsed_once() -> Iterator[None]:
    """While open, `gguf.GGUFReader(path)` (as transformers and this package call it) returns the
    reader made by the first such call for that path and mode."""
    import gguf

    with _LOCK:
        original = gguf.GGUFReader
        readers: dict[tuple[str, str], Any] = {}

        def reader(path: str | Path, mode: str = "r") -> Any:
            key = (str(Path(path).resolve()), mode)
            if key not in readers:
                readers[key] = original(path, mode)  # type: ignore[arg-type]  # gguf types mode as a Literal
            return readers[key]

        gguf.GGUFReader = reader  # type: ignore[assignment,misc]
        try:
            yield
        finally:
            gguf.GGUFReader = original  # type: ignore[misc]
