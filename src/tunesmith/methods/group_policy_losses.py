"""The pure functions of group-policy RL (GRPO, RLOO): advantages within a group of replies, the
clipped surrogate objective, and the k3 estimate of the KL to the reference. Tensors in,
tensors out, so each is tested against values computed by hand."""

from __future__ import annotations

import torch

STD_EPS = 1e-4


def normalised_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO's advantages of rewards laid out group after group ([prompt 0's replies, prompt 1's,
    ...]): each reward's distance from its group's mean in the group's standard deviations."""
    r = rewards.view(-1, group_size)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + STD_EPS)).reshape(-1)


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's advantages, laid out as GRPO's: each reward less the mean of the others in its group."""
    r = rewards.view(-1, group_size)
    return (r - (r.sum(1, keepdim=True) - r) / (group_size - 1)).reshape(-1)


def clipped_surrogate(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO objective (to maximise) and whether the clip bound it."""
    ratio = torch.exp(logps - old_logps)
    unclipped, clipped = ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages
    return torch.minimum(unclipped, clipped), (clipped < unclipped)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ ref) from a sample of π: exp(q) − q − 1 ≥ 0, q = ref − π."""
    q = ref_logps - logps
    return torch.exp(q) - q - 1
