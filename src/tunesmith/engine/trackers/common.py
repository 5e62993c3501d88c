"""What every tracker backend shares: the run it reports and how records become named scalars."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


@dataclass
class RunInfo:
    run_dir: Path
    name: str
    config: dict[str, Any]
    config_yaml: str
    resume_step: int = 0


def numbers(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numeric entries of a (nested) record, flattened to `a/b` names."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as tracker scalars: val_KEY -> val/KEY, everything else -> train/KEY."""
    named = {}
    for key, value in numbers({k: v for k, v in record.items() if k != "step"}).items():
        named[f"val/{key.removeprefix('val_')}" if key.startswith("val_") else f"train/{key}"] = value
    return named


def finals(results: dict[str, Any]) -> dict[str, float]:
    return {f"final/{k}": v for k, v in numbers(results).items()}


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as `section.key` -> value text, for trackers whose parameters are flat."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out
