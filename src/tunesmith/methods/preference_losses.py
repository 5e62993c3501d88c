"""Preference losses, as pure functions of sequence log-probabilities (unit-tested by hand).

Each takes per-example tensors and returns per-example losses plus the implicit rewards the
metrics report. Paired losses compare a chosen and a rejected response to the same prompt:

  sigmoid  DPO (Rafailov et al., 2023): -log σ(β·h), h = (π_c − ref_c) − (π_r − ref_r), with
           optional label smoothing ε (conservative DPO: -(1−ε)·log σ(βh) − ε·log σ(−βh))
  ipo      IPO (Azar et al., 2023): (h − 1/(2β))², on per-token mean log-probs
  hinge    SLiC (Zhao et al., 2023): max(0, 1 − β·h)
  simpo    SimPO (Meng et al., 2024), no reference: -log σ(β·(π̄_c − π̄_r) − γ) on mean log-probs
  orpo     ORPO (Hong et al., 2024), no reference: the chosen response's NLL (added by the
           method) + λ·(−log σ(log odds_c − log odds_r)), odds = p̄/(1−p̄) of the mean log-prob

KTO (Ethayarajh et al., 2024) is unpaired: each response is desirable or undesirable on its own,
weighed against a reference point z (an estimate of KL(π‖ref), never differentiated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAIRED_LOSSES = ("sigmoid", "ipo", "hinge", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")
LENGTH_NORMALISED = ("ipo", "simpo", "orpo")  # compare mean log-probs per token, not sums


def paired_loss(
    kind: str,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards). `chosen`/`rejected` are the policy's
    sequence log-probs (means per token for LENGTH_NORMALISED kinds), `ref_*` the reference's.
    Rewards are β·(policy − reference) for reference-based kinds, β·policy for the others."""
    if kind in REFERENCE_FREE:
        chosen_rewards, rejected_rewards = beta * chosen.detach(), beta * rejected.detach()
        if kind == "simpo":
            losses = -F.logsigmoid(beta * (chosen - rejected) - gamma)
        else:
            losses = -F.logsigmoid(log_odds(chosen) - log_odds(rejected))  # λ = beta, applied by the caller
        return losses, chosen_rewards, rejected_rewards
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(f"{kind}: needs reference log-probs")
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if kind == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif kind == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown preference loss {kind!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 − p)) for p = exp(mean_logp) < 1, computed stably."""
    return mean_logp - torch.log1p(-torch.exp(mean_logp.clamp(max=-1e-6)))


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-response losses, rewards) for KTO. `kl` is the reference point z: the batch's estimate
    of KL(π‖ref) from mismatched prompt/response pairs, clamped at 0 and never differentiated.
    Desirable: w_D·(1 − σ(β(r − z))); undesirable: w_U·(1 − σ(β(z − r))); r = log π − log ref."""
    ratio = logps - ref_logps
    z = kl.detach().clamp(min=0)
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (ratio - z))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio))),
    )
    return losses, beta * ratio.detach()


def bradley_terry_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, margin: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Reward-model loss per pair: −log σ(s_c − s_r − m), m an optional per-pair margin (Llama 2)."""
    return -F.logsigmoid(chosen_scores - rejected_scores - margin)
