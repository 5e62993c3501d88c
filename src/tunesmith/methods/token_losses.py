"""The built-in token losses of the Tinker training API, as pure functions: the target tokens'
log-probabilities under the model being trained and the datum's inputs in, the summed loss out.

Each loss sums over tokens (no mean): a client that wants a mean scales its weights or
advantages. `sampling_logprobs` are the log-probabilities the sampler gave the same tokens (q);
`target_logprobs` (p_θ) carry the gradient. Tensors in, tensors out, so each is tested against
values computed by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tunesmith.errors import UserError

# Clip bounds of the ratio p_θ/q where a request names none (ε = 0.2 on either side).
CLIP_LOW, CLIP_HIGH = 0.8, 1.2
DRO_BETA = 0.05


def cross_entropy(
    target_logprobs: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, Any]
) -> torch.Tensor:
    """Σ −log p_θ(target) · weight; targets of shape (N,) or (N, K) (K candidates per position, as
    top-K distillation sends with the teacher's probabilities as weights)."""
    return -(target_logprobs * inputs["weights"]).sum()


def _ratio(target_logprobs: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.exp(target_logprobs - inputs["logprobs"])


def _bounds(inputs: dict[str, torch.Tensor], config: dict[str, Any]) -> tuple[Any, ...]:
    """Per-token bounds where the datum carries them, else the request's, else ε = 0.2."""
    low = inputs.get("clip_low_threshold", config.get("clip_low_threshold", CLIP_LOW))
    high = inputs.get("clip_high_threshold", config.get("clip_high_threshold", CLIP_HIGH))
    return low, high


def importance_sampling(
    target_logprobs: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, Any]
) -> torch.Tensor:
    """REINFORCE corrected for sampling from q: −Σ (p_θ/q) · A."""
    return -(_ratio(target_logprobs, inputs) * inputs["advantages"]).sum()


def ppo(target_logprobs: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, Any]) -> torch.Tensor:
    """PPO's clipped objective, token by token: −Σ min(r·A, clip(r, low, high)·A), r = p_θ/q."""
    ratio = _ratio(target_logprobs, inputs)
    low, high = _bounds(inputs, config)
    advantages = inputs["advantages"]
    return -torch.minimum(ratio * advantages, torch.clamp(ratio, low, high) * advantages).sum()


def cispo(target_logprobs: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, Any]) -> torch.Tensor:
    """CISPO: the clipped ratio, held constant, weights the policy gradient: −Σ sg(clip(r))·log p_θ·A."""
    low, high = _bounds(inputs, config)
    clipped = torch.clamp(_ratio(target_logprobs, inputs), low, high).detach()
    return -(clipped * target_logprobs * inputs["advantages"]).sum()


def dro(target_logprobs: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, Any]) -> torch.Tensor:
    """DRO: −Σ (log p_θ·A − β/2·(log p_θ − log q)²), a quadratic penalty instead of a clip."""
    beta = float(config.get("beta", DRO_BETA))
    penalty = (target_logprobs - inputs["logprobs"]) ** 2
    return -(target_logprobs * inputs["advantages"] - 0.5 * beta * penalty).sum()


Loss = Callable[[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]], torch.Tensor]

# name -> (function, the inputs each datum must carry besides target_tokens, config keys it reads)
LOSSES: dict[str, tuple[Loss, tuple[str, ...], tuple[str, ...]]] = {
    "cross_entropy": (cross_entropy, ("weights",), ()),
    "importance_sampling": (importance_sampling, ("logprobs", "advantages"), ()),
    "ppo": (ppo, ("logprobs", "advantages"), ("clip_low_threshold", "clip_high_threshold")),
    "cispo": (cispo, ("logprobs", "advantages"), ("clip_low_threshold", "clip_high_threshold")),
    "dro": (dro, ("logprobs", "advantages"), ("beta",)),
}


def check_loss(name: str, input_names: set[str], config: dict[str, Any]) -> Loss:
    """The loss called `name`, once its inputs and config are what it reads (else a UserError
    that names what is missing or unknown)."""
    if name not in LOSSES:
        raise UserError(f"loss_fn {name!r}: not a loss this server has (it has {', '.join(LOSSES)})")
    fn, needed, keys = LOSSES[name]
    missing = [k for k in ("target_tokens", *needed) if k not in input_names]
    if missing:
        raise UserError(f"loss_fn {name}: every datum needs loss_fn_inputs {', '.join(missing)}")
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise UserError(
            f"loss_fn_config {', '.join(unknown)}: not read by {name}"
            + (f" (it reads {', '.join(keys)})" if keys else " (it reads none)")
        )
    return fn
