"""Causal attention for one sequence from batched matmuls: on a CPU in bf16, 2-3x faster than SDPA.

SDPA's CPU flash kernel works in small fp32 blocks and its backward pass is slow: for one layer
of the bundled model (9 query heads, 3 key/value heads, 64 dims) forward and backward take
4.1 ms at 200 tokens and 34.5 ms at 900, against 1.6 and 18.1 ms here (bench/README.md). Here
every matmul is one bf16 GEMM over all heads: grouped-query heads are folded into the query rows
(no copies of keys and values), and long sequences are cut into query chunks that see only the
keys up to their end, so the masked upper triangle is mostly not computed. The numerics are those
of transformers' eager attention under autocast (scores rounded to bf16, softmax computed in
fp32), so this is used only for bf16/fp16 on a CPU; in fp32, and on GPUs, SDPA is as fast or
faster and is used instead.

While training, a chunk does not keep its probabilities for the backward pass (the largest
activation of a long sequence: heads x rows x keys): it keeps queries, keys and values, as the
matmuls keep them anyway, and recomputes scores and softmax from them, with the same kernels in
the same order as autograd, so the gradients are those of keeping them, bit for bit (tested).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

CHUNK = 256  # query rows per GEMM for long sequences: measured against 128 and 512 on 600-900 tokens

_causal_bias: dict[torch.dtype, torch.Tensor] = {}


def low_precision(query: torch.Tensor) -> torch.dtype | None:
    """The dtype this attention should run in, or None where SDPA should: bf16/fp16 on a CPU, by
    the tensors' dtype or by autocast (under which RoPE leaves queries and keys in fp32 and SDPA
    would cast them down)."""
    if query.device.type != "cpu":
        return None
    if query.dtype in (torch.bfloat16, torch.float16):
        return query.dtype
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in (torch.bfloat16, torch.float16):
        return torch.get_autocast_dtype("cpu")
    return None


def _bias(length: int, dtype: torch.dtype) -> torch.Tensor:
    """A [length, length] additive causal mask (0 on and below the diagonal, -inf above); one
    cached per dtype, grown when needed: any [a:b, :b] slice of it is the mask of those rows."""
    cached = _causal_bias.get(dtype)
    if cached is None or cached.shape[0] < length:
        size = max(length, 1024)
        above = torch.ones(size, size, dtype=torch.bool).triu(1)
        cached = torch.zeros(size, size, dtype=dtype).masked_fill_(above, float("-inf"))
        _causal_bias[dtype] = cached
    return cached


def causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, dropout: float = 0.0
) -> torch.Tensor:
    """query [heads, length, dim], key/value [kv heads, keys, dim] -> [heads, length, dim]:
    softmax(q k^T * scaling + causal mask) v, heads sharing key/value heads in groups. The queries
    are the last `length` of the keys: keys before them (a prefix the sequence shares with others)
    are seen by every query."""
    with torch.autocast("cpu", enabled=False):  # inputs are in the dtype wanted; softmax stays in it
        return _chunked(query * scaling, key, value, dropout)


def _chunked(query, key, value, dropout):
    heads, length, dim = query.shape
    kv_heads, offset = key.shape[0], key.shape[1] - length
    group = heads // kv_heads
    bias = _bias(offset + length, query.dtype)
    recompute = not dropout and torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    outs, start = [], 0
    for q in query.split(CHUNK, 1):  # split, not sliced: one concatenation of gradients, no zero-filled copies
        rows = q.shape[1]
        end = start + rows
        keys, values = (key, value) if end == length else (key[:, : offset + end], value[:, : offset + end])
        q = q.reshape(kv_heads, group * rows, dim)  # the heads of a group stacked as rows
        chunk_bias = bias[offset + start : offset + end, : offset + end]
        if recompute:
            out = _ChunkAttention.apply(q, keys, values, chunk_bias)
        else:
            probs = _probabilities(q, keys, chunk_bias)
            if dropout:
                probs = F.dropout(probs, dropout)
            out = torch.bmm(probs.view(kv_heads, group * rows, offset + end), values)
        outs.append(out.view(heads, rows, dim))
        start = end
    return outs[0] if len(outs) == 1 else torch.cat(outs, 1)


def _probabilities(q: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q keys^T + bias) as [kv heads, group, rows, keys]."""
    rows, end = bias.shape
    scores = torch.bmm(q, keys.transpose(1, 2)).view(keys.shape[0], -1, rows, end)
    return torch.softmax(scores.add_(bias), -1)


class _ChunkAttention(torch.autograd.Function):
    """softmax(q keys^T + bias) values for one query chunk, keeping q, keys and values only."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(q, keys, values, bias)
        probs = _probabilities(q, keys, bias)
        return torch.bmm(probs.view(q.shape[0], q.shape[1], -1), values)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, keys, values, bias = ctx.saved_tensors
        probs = _probabilities(q, keys, bias)
        flat = probs.view(q.shape[0], q.shape[1], -1)
        # autograd's formulas for bmm, softmax and the views between, in its order
        grad_values = flat.transpose(1, 2).bmm(grad)
        grad_probs = grad.bmm(values.transpose(1, 2)).view(probs.shape)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype).view(flat.shape)
        grad_q = grad_scores.bmm(keys)
        grad_keys = q.transpose(1, 2).bmm(grad_scores).transpose(1, 2)
        return grad_q, grad_keys, grad_values, None
