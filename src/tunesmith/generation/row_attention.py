"""Attention over each row's own KV cache, so rows of any length share one forward pass.

A forward pass of the engine has one row per request in the batch dimension (decoding: one new
token each; prefilling: a prompt). The model computes queries, keys and values as usual (RoPE at
each row's own positions, from `position_ids`); this attention function writes each row's new
keys and values into its range of the `KVArena` and attends its queries over that range alone:
causally for a prompt, over everything so far for a decoded token. So no padding, no mask, and no
transformers cache object is involved, and a row's result is the one it gets alone: per row, the
model's own attention computation is called (SDPA as transformers calls it, or the eager one for
soft-capped scores and sliding windows shorter than the row).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tunesmith.generation.kv_arena import KVArena, Span
from tunesmith.model.segment_attention import exact_attention

NAME = "tunesmith_rows"
SWAPPED = ("sdpa", "eager")
_registered = False


@dataclass
class RowsPass:
    """What one forward pass writes and reads: per batch row, its slots and how many tokens of
    them are filled before this pass; `sdpa` says whether the model attends with SDPA (else eager)."""

    arena: KVArena
    spans: list[Span]
    filled: list[int]
    sdpa: bool = True


def row_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, kv_rows=None,
                  **kwargs):
    """query [rows, heads, n, dim], key/value [rows, kv heads, n, dim] -> ([rows, n, heads, dim], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kv_rows is None:
        raise RuntimeError("row attention runs only inside a generation engine pass (no kv_rows given)")
    window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    keys, values = kv_rows.arena.block(module.layer_idx, key[0])
    n = key.shape[2]
    out = []
    for b, (span, filled) in enumerate(zip(kv_rows.spans, kv_rows.filled)):
        if filled + n > span.size:
            raise RuntimeError(f"row {b}: {filled + n} tokens for {span.size} slots")
        at = span.start + filled
        keys[:, at : at + n] = key[b]
        values[:, at : at + n] = value[b]
        k = keys[None, :, span.start : at + n]
        v = values[None, :, span.start : at + n]
        q = query[b : b + 1]
        windowed = window is not None and filled + n > window
        if softcap is not None or windowed or not kv_rows.sdpa or (filled and n > 1):
            out.append(exact_attention(q, k, v, scale, window=window, softcap=softcap).transpose(1, 2))
        else:  # as transformers runs SDPA for one unpadded sequence: causal over a whole prompt, none for one token
            out.append(sdpa_attention_forward(module, q, k, v, None, dropout=0.0, scaling=scaling)[0])
    return torch.cat(out).contiguous(), None


def _no_mask(*args, **kwargs):
    return None  # each row's attention needs none (see row_attention)


def register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, row_attention)
    AttentionMaskInterface.register(NAME, _no_mask)
    _registered = True


def _configs(model) -> list:
    seen, out = set(), []
    for sub in [model, *model.modules()]:
        config = getattr(sub, "config", None)
        if config is not None and id(config) not in seen and hasattr(config, "_attn_implementation"):
            seen.add(id(config))
            out.append(config)
    return out


def attention_kind(model) -> str:
    """How the model attends, for row attention: 'sdpa', or 'eager' (its own computation, kept
    for soft-capped scores); a model switched to segment attention for training counts as SDPA
    (that is what it runs without segments). Others cannot take row attention."""
    from tunesmith.model.segment_attention import NAME as SEGMENTS

    kind = getattr(model.config, "_attn_implementation", None)
    if kind == SEGMENTS:
        return "sdpa"
    if kind not in SWAPPED:
        raise ValueError(f"the generation engine runs models with SDPA or eager attention, not {kind!r}")
    return kind


@contextmanager
def rows_attention(model):
    """The model attends row by row (`row_attention`) inside the block."""
    from tunesmith.model.segment_attention import NAME as SEGMENTS

    register()
    configs = [c for c in _configs(model) if c._attn_implementation in (*SWAPPED, SEGMENTS)]
    previous = [c._attn_implementation for c in configs]
    for c in configs:
        c._attn_implementation = NAME
    try:
        yield
    finally:
        for c, kind in zip(configs, previous):
            c._attn_implementation = kind
