"""Precision: fp32 or bf16 autocast over fp32 master weights; `auto` picks bf16 where it is fast."""

from __future__ import annotations

import contextlib

import torch


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def bf16_is_fast(dev: torch.device) -> bool:
    """bf16 pays off on GPUs that support it and on CPUs with native bf16 instructions."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None)]
    return any(check() for check in checks if check is not None)


def resolve_precision(name: str, dev: torch.device) -> str:
    if name == "auto":
        return "bf16" if bf16_is_fast(dev) else "fp32"
    return name


def autocast(precision: str, dev: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
