"""The untuned base model as a reference: loaded only when needed, its outputs cached on disk.

Forgetting is measured against what the base model itself did (its answers to general questions,
its own greedy replies to general prompts), and self-replay trains on those replies. They depend
only on the base weights, the inference precision and the inputs, so they are computed once per
machine and reused by every run and every variant of a comparison.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from tunesmith import atomic
from tunesmith.model.identity import cache_dir, model_key
from tunesmith.model.resolve import Resolved, content_key


def inputs_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class BaseReference:
    """The base model for inference, with a disk cache of anything computed from it."""

    def __init__(self, resolved: Resolved, dtype: torch.dtype):
        self.resolved = resolved
        self.dtype = dtype
        self._loaded = None
        self.key = f"{model_key(resolved)}-{str(dtype).removeprefix('torch.')}"

    def get(self):
        """(model, tokenizer), loaded on first use."""
        if self._loaded is None:
            from tunesmith.model.load import load_for_inference

            self._loaded = load_for_inference(self.resolved, dtype=self.dtype)
        return self._loaded

    def release(self) -> None:
        self._loaded = None

    def cached(self, tag: str, inputs, compute):
        """`compute(model, tokenizer)` once per (weights, precision, tag, inputs); JSON on disk after."""
        path = cache_dir() / f"{self.key}-{tag}-{inputs_key(tag, inputs)}.json"
        if path.is_file():
            return json.loads(path.read_text())
        value = compute(*self.get())
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(value))
        return value


def data_version(source: str | None) -> str | None:
    """What a cached result over a user's data set depends on: its files' contents, not its name,
    so an edited file is probed afresh. A hub id stands for itself."""
    if source is None:
        return None
    path = Path(source)
    if path.is_file():
        return content_key(path)
    if path.is_dir():
        return ",".join(f"{f.relative_to(path)}:{content_key(f)}" for f in sorted(path.rglob("*")) if f.is_file())
    return source
