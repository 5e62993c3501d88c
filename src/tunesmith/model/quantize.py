"""QLoRA's quantized base: bitsandbytes 4-bit (NF4/FP4) or 8-bit weights, on CPU or GPU.

A QLoRA run saves its quantization settings beside the adapter (`quantization.json`), so the
base can be quantized again exactly as it was trained on (quantization is deterministic), or
dequantized for a merge that reproduces the trained model rather than the unquantized one.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import torch

from tunesmith import atomic
from tunesmith.config import AdapterConfig
from tunesmith.errors import UserError, first_line

SETTINGS_FILE = "quantization.json"


def settings(adapter: AdapterConfig, compute_dtype: torch.dtype) -> dict:
    return {
        "bits": adapter.bits,
        "quant_type": adapter.quant_type,
        "double_quant": adapter.double_quant,
        "compute_dtype": str(compute_dtype).removeprefix("torch."),
    }


def import_bitsandbytes() -> ModuleType:
    """bitsandbytes (its CPU backend's notice about an optional hub kernel is quieted in
    `tunesmith.model`, before PEFT imports it)."""
    import bitsandbytes

    return bitsandbytes


def require_bitsandbytes() -> None:
    try:
        import_bitsandbytes()
    except Exception as e:
        raise UserError(
            f"adapter.type qlora: needs bitsandbytes 0.46 or newer (pip install bitsandbytes); {first_line(e, 160)}"
        ) from None


def bnb_config(q: dict):
    from transformers import BitsAndBytesConfig

    require_bitsandbytes()
    if q["bits"] == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q["quant_type"],
        bnb_4bit_use_double_quant=q["double_quant"],
        bnb_4bit_compute_dtype=getattr(torch, q["compute_dtype"]),
    )


def is_quantized(model) -> bool:
    from tunesmith.model.peft_wrapping import unwrap

    return bool(getattr(unwrap(model), "is_quantized", False))


def write_settings(folder: Path, q: dict) -> None:
    atomic.write_text(folder / SETTINGS_FILE, json.dumps(q, indent=2))


def read_settings(folder: Path) -> dict | None:
    path = folder / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
