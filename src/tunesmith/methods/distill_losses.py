"""Distillation losses, as pure functions of student and teacher logits (unit-tested by hand).

Each takes logits at the positions that carry loss, [positions, vocabulary], softens both with
the temperature T and returns the per-position divergence times T² (so that gradients keep their
size as T changes, as in Hinton et al., 2015):

  forward_kl   KL(teacher ‖ student): the student covers everything the teacher might say
  reverse_kl   KL(student ‖ teacher): the student commits to what the teacher finds likeliest
  jsd          generalized Jensen-Shannon (GKD, Agarwal et al., 2024) with M = β·teacher + (1−β)·student:
               β·KL(teacher ‖ M) + (1−β)·KL(student ‖ M); β = 0 is forward KL and β = 1 reverse KL
               (the limits, taken as those losses exactly)

`topk_forward_kl` is forward KL against a teacher known only by its top-k log-probabilities (a
cache): the teacher renormalised over its top k, the student's log-probabilities read there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

LOSSES = ("forward_kl", "reverse_kl", "jsd")


def divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-position divergence between softened student and teacher distributions, times T²."""
    s = F.log_softmax(student_logits.float() / temperature, -1)
    t = F.log_softmax(teacher_logits.float() / temperature, -1)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        d = _kl(t, s)
    elif kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        d = _kl(s, t)
    elif kind == "jsd":
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), 0)
        d = beta * _kl(t, m) + (1 - beta) * _kl(s, m)
    else:
        raise ValueError(f"unknown distillation loss {kind!r}")
    return d * temperature**2


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from log-probabilities; 0·log 0 taken as 0."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p)).sum(-1)


def topk_forward_kl(
    student_logits: torch.Tensor, teacher_indices: torch.Tensor, teacher_logps: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Forward KL against a cached top-k teacher. `teacher_logps` are the teacher's log-probabilities
    at temperature 1 (what the cache holds); softened here by T and renormalised over the k."""
    s = F.log_softmax(student_logits.float() / temperature, -1).gather(-1, teacher_indices)
    t = F.log_softmax(teacher_logps.float() / temperature, -1)  # log-probs/T renormalised = softened top-k
    return _kl(t, s) * temperature**2


def chunked(
    fn: Callable[..., torch.Tensor], rows: torch.Tensor, *others: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """Sum of fn(rows[i:j], *others[i:j]) over chunks of positions, each recomputed in the backward
    pass (activation checkpointing): only one chunk's [positions × vocabulary] logits exist at a
    time, so memory does not grow with vocabulary × sequence × batch."""
    from torch.utils.checkpoint import checkpoint

    total = rows.new_zeros((), dtype=torch.float32)
    for i in range(0, rows.shape[0], chunk):
        parts = [rows[i : i + chunk]] + [o[i : i + chunk] for o in others]
        total = total + (checkpoint(fn, *parts, use_reentrant=False) if rows.requires_grad else fn(*parts))
    return total
