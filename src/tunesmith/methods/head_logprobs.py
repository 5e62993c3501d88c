"""Log-probabilities of target tokens through the output head, a chunk of rows at a time.

The vocabulary projection of a small model is its largest matmul, and the [tokens x vocabulary]
logits with their fp32 copy, softmax and gradient are its largest tensors (2,300 trained tokens
x 49,152 words: 450 MB each, several of them alive at once, and page-faulted fresh every step on
a CPU). Here logits exist one chunk of rows at a time. Each token's log-probability depends on
its own hidden row only, so when the head is frozen (every adapter) the forward pass also
computes d logp / d hidden per row — (onehot - softmax) @ W — and the backward pass is one
multiplication by the incoming gradient: the same matmuls as forward + backward of plain
logits, none of the big tensors kept. When the head trains (full fine-tuning, tied embeddings)
the backward pass recomputes each chunk's logits for the weight gradient instead.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_ROWS = 128  # fp32 logits of 128 x 49,152 = 25 MB: small enough for glibc to reuse, not re-map


def _onehot_minus_softmax(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d log p(target) / d logits for a chunk, computed in place of its fp32 logits."""
    grad = logits.sub_(lse[:, None]).exp_().neg_()
    grad[torch.arange(len(targets), device=targets.device), targets] += 1
    return grad


class _HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        compute_dtype: torch.dtype,
        chunk: int,
        track: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        need_h, need_w = track and ctx.needs_input_grad[0], track and ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        correct = torch.empty(n, dtype=torch.bool, device=hidden.device)
        d_hidden = torch.empty_like(hidden) if need_h and not need_w else None
        lse_all = torch.empty(n, dtype=torch.float32, device=hidden.device) if need_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk):
                h, t = hidden[s : s + chunk].to(compute_dtype), targets[s : s + chunk]
                logits = (h @ w.T).float()
                lse = torch.logsumexp(logits, -1)
                logp[s : s + chunk] = logits.gather(1, t[:, None])[:, 0] - lse
                correct[s : s + chunk] = logits.argmax(-1) == t
                if d_hidden is not None:  # (onehot - softmax) @ W, row by row
                    probs = _onehot_minus_softmax(logits, lse, t)
                    d_hidden[s : s + chunk] = (probs.to(compute_dtype) @ w).to(hidden.dtype)
                if lse_all is not None:
                    lse_all[s : s + chunk] = lse
        ctx.compute_dtype, ctx.chunk = compute_dtype, chunk
        ctx.mark_non_differentiable(correct)
        if not track:
            return logp, correct
        if need_w:
            ctx.save_for_backward(hidden, weight, targets, lse_all)
        else:
            ctx.save_for_backward(d_hidden)
        return logp, correct

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor, _grad_correct: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if not ctx.needs_input_grad[1]:
            (d_hidden,) = ctx.saved_tensors
            grad_h = d_hidden * grad_logp[:, None].to(d_hidden.dtype) if ctx.needs_input_grad[0] else None
            return grad_h, None, None, None, None, None
        hidden, weight, targets, lse_all = ctx.saved_tensors
        dtype, chunk = ctx.compute_dtype, ctx.chunk
        w = weight.to(dtype)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s : s + chunk].to(dtype), targets[s : s + chunk]
            g = _onehot_minus_softmax((h @ w.T).float(), lse_all[s : s + chunk], t)
            g = (g * grad_logp[s : s + chunk, None]).to(dtype)  # d loss / d logits of this chunk
            if grad_h is not None:
                grad_h[s : s + chunk] = (g @ w).to(hidden.dtype)
            grad_w += (g.T @ h).float()
        return grad_h, grad_w.to(weight.dtype), None, None, None, None


def head_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target) per row in fp32, whether the argmax is the target) for hidden rows [n, d]
    through an output head weight [vocabulary, d] without bias. Matmuls run in the autocast dtype
    when autocast is on (as the head itself would), the softmax in fp32."""
    dev = hidden.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
    track = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    logp, correct = _HeadLogprobs.apply(  # type: ignore[no-untyped-call]  # torch leaves apply untyped
        hidden, weight, targets, dtype, chunk, track
    )
    return logp, correct
