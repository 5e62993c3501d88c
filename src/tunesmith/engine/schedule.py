"""Optimizer and learning-rate schedule (constant, linear or cosine decay after linear warmup)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.errors import first_line

if TYPE_CHECKING:
    from torch.nn import Module

    from tunesmith.config import TrainConfig


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return int(cfg.warmup * total_steps) if cfg.warmup < 1 else int(cfg.warmup)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: Module, cfg: TrainConfig, lora_plus_ratio: float | None = None) -> list[dict[str, Any]]:
    """Weight decay on matrices only; with LoRA+ (Hayou et al., 2024) the B matrices learn
    `lora_plus_ratio` times faster than A, which the paper finds trains LoRA faster and better."""
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            fast = bool(lora_plus_ratio) and "lora_B" in name
            groups.setdefault((p.ndim >= 2, fast), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": cfg.weight_decay if matrix else 0.0,
            "lr": cfg.lr * ((lora_plus_ratio or 1.0) if fast else 1.0),
        }
        for (matrix, fast), params in sorted(groups.items(), reverse=True)
    ]


def make_adamw(groups: list[dict[str, Any]], cfg: TrainConfig) -> tuple[torch.optim.Optimizer, str | None]:
    """AdamW, or bitsandbytes' 8-bit AdamW (optimizer states in 8 bits) where it runs here.
    Returns the optimizer and a note when the 8-bit one had to fall back."""
    adam: dict[str, Any] = {"lr": cfg.lr, "betas": (0.9, 0.999), "eps": 1e-8}
    note = None
    if cfg.optimizer == "adamw8bit":
        try:
            from tunesmith.model.quantize import import_bitsandbytes

            return import_bitsandbytes().optim.AdamW8bit(groups, **adam), None
        except Exception as e:  # not installed, or no kernels for this platform
            note = (
                f"train.optimizer adamw8bit: bitsandbytes 8-bit AdamW is not available here "
                f"({first_line(e, 120)}); using torch AdamW (32-bit states)"
            )
    return torch.optim.AdamW(groups, **adam), note


def build_optimizer(
    model: Module, cfg: TrainConfig, total_steps: int, lora_plus_ratio: float | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, str | None]:
    optimizer, note = make_adamw(param_groups(model, cfg, lora_plus_ratio), cfg)
    warm = warmup_steps(cfg, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warm, cfg.schedule))
    return optimizer, scheduler, note
