"""Attention computed within each sequence of a training batch only.

A packed row holds several examples; the block-diagonal causal mask that keeps them apart still
makes SDPA compute every query against every key of the row (a 1,024-token row of five
examples: five times the work), and a padded row computes its padding. Training batches say
where their sequences are (`segments`: per row, the [start, end) of each example), and this
attention function runs causal SDPA on each of those spans alone: the same result (tested
against the masked model), with work proportional to the sum of squared example lengths. In bf16 on a CPU each span goes to
`matmul_attention` (2-3x faster there than SDPA's CPU kernel); elsewhere to SDPA.
Calls without `segments` (generation, a KV cache, left-padded prompts) are plain SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.model import matmul_attention

NAME = "tunesmith_segments"
_registered = False


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      segments=None, **kwargs):
    """query [batch, heads, length, dim], key/value [batch, kv heads, length, dim] ->
    ([batch, length, heads, dim], None), as transformers' attention functions return."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    batch, heads, length, dim = query.shape
    if len(segments) != batch:
        raise ValueError(f"segment attention: {len(segments)} rows of segments for a batch of {batch}")
    gqa = key.shape[1] != heads
    scale = dim**-0.5 if scaling is None else scaling
    low = matmul_attention.low_precision(query)
    if low is not None:  # cast once here, not once per sequence
        query, key, value = query.to(low), key.to(low), value.to(low)

    def attend(q, k, v):  # one sequence: [heads, n, dim]
        if low is not None:
            return matmul_attention.causal_attention(q, k, v, scale, dropout)
        return F.scaled_dot_product_attention(q[None], k[None], v[None], dropout_p=dropout, is_causal=True,
                                              scale=scale, enable_gqa=gqa)[0]

    rows = []
    # unbind and split rather than index: their backward passes put the pieces' gradients together
    # in one concatenation, where indexing would fill a zero tensor the size of the batch per piece
    for spans, q_row, k_row, v_row in zip(segments, query.unbind(0), key.unbind(0), value.unbind(0)):
        pieces = _pieces(spans, length)
        sizes = [n for n, _ in pieces]
        parts = [attend(q, k, v) if is_sequence else q.new_zeros(heads, n, dim)  # padding: its outputs carry no loss
                 for (n, is_sequence), q, k, v in zip(pieces, q_row.split(sizes, 1), k_row.split(sizes, 1), v_row.split(sizes, 1))]
        rows.append(torch.cat(parts, 1) if len(parts) > 1 else parts[0])
    out = torch.stack(rows)
    return out.transpose(1, 2).contiguous(), None


def _pieces(spans, length: int) -> list[tuple[int, bool]]:
    """A row cut into (size, is a sequence) pieces: the spans, and the gaps and padding between."""
    pieces, cursor = [], 0
    for start, stop in spans:
        if not cursor <= start < stop <= length:
            raise ValueError(f"segment attention: span [{start}, {stop}) out of order or outside a row of {length}")
        if start > cursor:
            pieces.append((start - cursor, False))
        pieces.append((stop - start, True))
        cursor = stop
    if cursor < length:
        pieces.append((length - cursor, False))
    return pieces


def register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # calls without segments get SDPA's mask
    _registered = True


def use_segment_attention(model) -> str | None:
    """Switch a transformers model (under any PEFT wrapper) to segment attention where it uses
    SDPA; returns the implementation to restore, or None if left as it was."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return None
    register()
    config._attn_implementation = NAME
    for sub in model.modules():  # submodules holding their own reference to the config
        sub_config = getattr(sub, "config", None)
        if sub_config is not None and getattr(sub_config, "_attn_implementation", None) == "sdpa":
            sub_config._attn_implementation = NAME
    return "sdpa"


def restore_attention(model, previous: str | None) -> None:
    if previous is None:
        return
    for sub in [model, *model.modules()]:
        sub_config = getattr(sub, "config", None)
        if sub_config is not None and getattr(sub_config, "_attn_implementation", None) == NAME:
            sub_config._attn_implementation = previous


def uses_segments(model) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == NAME
