"""Forgetting mitigated in weight space, after training and for free: the model
θ(α) = θ₀ + α(θ − θ₀) between the base θ₀ and the tuned θ (WiSE-FT). Small α keeps more of what
the base model could do, large α more of what tuning taught; the report draws the frontier.

`torch.lerp` computes θ(α) exactly at both ends (θ₀ at α = 0, θ at α = 1), so those two points
are the base and the tuned model bit for bit. A LoRA adapter interpolates by scaling its B
matrices (the update B·A scales with it); IA3 by its vectors l(α) = 1 + α(l − 1).
"""

from __future__ import annotations

import torch

from tunesmith.errors import UserError


def lerp(base: torch.Tensor, tuned: torch.Tensor, alpha: float) -> torch.Tensor:
    """θ₀ + α(θ − θ₀), computed in fp32 and exact at α = 0 and 1."""
    out = torch.lerp(base.float(), tuned.float(), alpha)
    return out.to(tuned.dtype)


def _is_lora_b(name: str) -> bool:
    return ".lora_B." in name or ".lora_embedding_B." in name


def scale_adapter_weights(weights: dict[str, torch.Tensor], alpha: float, kind: str) -> dict[str, torch.Tensor]:
    """An adapter's saved weights moved α of the way from the base: LoRA's B·α, IA3's 1 + α(l − 1)."""
    out = {}
    for name, value in weights.items():
        if kind == "LORA" and _is_lora_b(name):
            out[name] = value * alpha if alpha != 1 else value.clone()
        elif kind == "IA3" and "ia3_l" in name:
            out[name] = lerp(torch.ones_like(value), value, alpha)
        elif kind == "LORA" and ("lora_A" in name or "lora_embedding_A" in name):
            out[name] = value.clone()
        else:
            raise UserError(
                f"interpolation: adapter weight {name} has no base value to move towards "
                f"({kind} adapters with extra trained modules or DoRA magnitudes cannot be interpolated; "
                "merge the adapter into the model and interpolate that)"
            )
    return out


def unmerged_lora(model) -> bool:
    """Whether the model still holds LoRA B matrices (interpolated by scaling them, no base needed)."""
    return any(_is_lora_b(n) for n, _ in model.named_parameters())


class Interpolation:
    """Sets a tuned model in place to θ(α), one α after another, and back to θ at the end.

    A merged model (every weight a plain tensor) moves each weight between its base value, read from
    `base_model`, and its tuned value. An unmerged LoRA model (a quantized base) scales its B matrices.
    """

    def __init__(self, model, base_model=None):
        self.model = model
        named = dict(model.named_parameters())
        self.lora = [n for n in named if _is_lora_b(n)]
        if self.lora:
            self.tuned = {n: named[n].detach().clone() for n in self.lora}
            self.base = None
            return
        if hasattr(model, "peft_config"):
            raise UserError(
                "forgetting.interpolate: this adapter is not merged into the weights and is not LoRA "
                "(prefix and prompt tuning have no base value to interpolate from)"
            )
        base = dict(base_model.named_parameters())
        missing = [n for n in named if n not in base or base[n].shape != named[n].shape]
        if missing:
            raise UserError(f"forgetting.interpolate: the tuned model's {missing[0]} has no counterpart in the base")
        self.tuned = {n: p.detach().clone() for n, p in named.items()}
        self.base = {n: base[n].detach() for n in named}

    @torch.no_grad()
    def set(self, alpha: float) -> None:
        params = dict(self.model.named_parameters())
        for name, tuned in self.tuned.items():
            if self.base is None:
                params[name].copy_(tuned * alpha if alpha != 1 else tuned)
            else:
                params[name].copy_(lerp(self.base[name].to(tuned.device), tuned, alpha))

    def restore(self) -> None:
        self.set(1.0)
