"""What identifies a model's weights, and where outputs computed from them are cached.

A cached result (the base model's probe answers, a teacher's top-k log-probs) is valid for the
weights it came from, wherever those files live: the key is the files' content, not their path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tunesmith.model.resolve import Resolved, content_key, home

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def model_key(resolved: Resolved) -> str:
    """Identity of a model's weights (the files' content keys), not of where they live."""
    h = hashlib.sha256()
    for folder in [resolved.path] + ([resolved.adapter] if resolved.adapter else []):
        for f in sorted(folder.iterdir()):
            if f.suffix in WEIGHT_SUFFIXES:
                h.update(f"{f.name}:{content_key(f)}".encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Results computed from a model's weights, keyed by `model_key`."""
    return home() / "reference"
