"""Attention computed within each sequence of a training batch only.

A packed row holds several examples; the block-diagonal causal mask that keeps them apart still
makes SDPA compute every query against every key of the row (a 1,024-token row of five
examples: five times the work), and a padded row computes its padding. Training batches say
where their sequences are (`segments`: per row, the [start, end) of each example), and this
attention function runs causal SDPA on each of those spans alone: the same result (tested
against the masked model), with work proportional to the sum of squared example lengths. A span
may also see an earlier span's keys first (`segment_prefixes`): several replies packed after the
one prompt they share, which is then computed once for all of them. In bf16 on a CPU each span
goes to `matmul_attention` (2-3x faster there than SDPA's CPU kernel); elsewhere to SDPA.
Calls without `segments` (generation, a KV cache, left-padded prompts) are plain SDPA.

What a family's attention adds is kept: a sliding window (Mistral, Qwen 2/3, Phi-3, Gemma 2/3:
a query sees only the last `sliding_window` keys) and soft-capped scores (Gemma 2:
cap·tanh(scores / cap)) go to `exact_attention`, the model's own eager computation on one span,
with the window as a band in the causal mask; a span no longer than the window, without a cap,
takes the fast path above, which is then the same computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.model import matmul_attention

NAME = "tunesmith_segments"
_registered = False


def segment_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling=None,
    segments=None,
    segment_prefixes=None,
    **kwargs,
):
    """query [batch, heads, length, dim], key/value [batch, kv heads, length, dim] ->
    ([batch, length, heads, dim], None), as transformers' attention functions return.

    `segment_prefixes` (optional, per row one entry per segment): None, or the index of an earlier
    segment of the row whose keys (its own prefix's included) this segment's queries all see
    before its own, causally: replies packed after the one prompt they share, whose positions
    continue the prompt's."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    if segments is None:
        if softcap is not None:  # SDPA has no soft-cap; the mask (sliding windows included) is the model's
            out = exact_attention(
                query,
                key,
                value,
                scaling or query.shape[-1] ** -0.5,
                attention_mask=attention_mask,
                softcap=softcap,
                dropout=dropout if module.training else 0.0,
            )
            return out.transpose(1, 2).contiguous(), None
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, length, dim = query.shape
    if len(segments) != batch:
        raise ValueError(f"segment attention: {len(segments)} rows of segments for a batch of {batch}")
    gqa = key.shape[1] != heads
    scale = dim**-0.5 if scaling is None else scaling
    low = matmul_attention.low_precision(query)
    if low is not None:  # cast once here, not once per sequence
        query, key, value = query.to(low), key.to(low), value.to(low)

    def attend(q, k, v):  # one sequence: [heads, n, dim], its queries the last n of its keys
        if softcap is not None or (window is not None and k.shape[1] > window):
            return exact_attention(q[None], k[None], v[None], scale, window=window, softcap=softcap, dropout=dropout)[0]
        if low is not None:
            return matmul_attention.causal_attention(q, k, v, scale, dropout)
        if k.shape[1] > q.shape[1]:  # after a prefix (SDPA's causal mask would align the queries with its start)
            return exact_attention(q[None], k[None], v[None], scale, dropout=dropout)[0]
        return F.scaled_dot_product_attention(
            q[None], k[None], v[None], dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa
        )[0]

    if segment_prefixes is not None and len(segment_prefixes) != batch:
        raise ValueError(f"segment attention: {len(segment_prefixes)} rows of prefixes for a batch of {batch}")
    rows = [
        _row(r, spans, segment_prefixes[r] if segment_prefixes is not None else None, q_row, k_row, v_row, attend)
        for r, (spans, q_row, k_row, v_row) in enumerate(zip(segments, query.unbind(0), key.unbind(0), value.unbind(0)))
    ]
    out = torch.stack(rows)
    return out.transpose(1, 2).contiguous(), None


def _row(r: int, spans, prefixes, q_row, k_row, v_row, attend) -> torch.Tensor:
    """One row's attention [heads, length, dim]: each segment through `attend`, after the keys of
    the segment its prefix names (if any); padding and gaps give zeros."""
    heads, length, dim = q_row.shape
    pieces = _pieces(spans, length)
    sizes = [n for n, _ in pieces]
    prefixes = prefixes if prefixes is not None else [None] * len(spans)
    if len(prefixes) != len(spans):
        raise ValueError(f"segment attention: row {r} has {len(spans)} segments and {len(prefixes)} prefixes")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # each segment's keys and values, its prefix's included
    parts = []
    # split rather than index: the backward pass puts the pieces' gradients together in one
    # concatenation, where indexing would fill a zero tensor the size of the batch per piece
    for (n, is_sequence), q, k, v in zip(pieces, q_row.split(sizes, 1), k_row.split(sizes, 1), v_row.split(sizes, 1)):
        if not is_sequence:
            parts.append(q.new_zeros(heads, n, dim))  # padding: its outputs carry no loss
            continue
        before = prefixes[len(seen)]
        if before is not None:
            if not 0 <= before < len(seen):
                raise ValueError(f"segment attention: row {r} segment {len(seen)} has prefix {before}")
            k, v = torch.cat([seen[before][0], k], 1), torch.cat([seen[before][1], v], 1)
        seen.append((k, v))
        parts.append(attend(q, k, v))
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def exact_attention(
    query,
    key,
    value,
    scaling: float,
    *,
    window: int | None = None,
    softcap: float | None = None,
    attention_mask=None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Attention as transformers' eager implementations compute it (Gemma 2's, with soft-cap):
    query [batch, heads, n, dim], key/value [batch, kv heads, n, dim] -> [batch, heads, n, dim].
    Without `attention_mask`, causal (the queries being the last of the keys), within `window`
    keys if given; with one (boolean: True attends, or additive), that mask alone."""
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is None:  # the last queries of the keys (a KV cache holds the earlier ones)
        n, m = query.shape[2], key.shape[2]
        rows = torch.arange(m - n, m, device=query.device)[:, None]
        cols = torch.arange(m, device=query.device)[None, :]
        allowed = cols <= rows
        if window is not None:
            allowed = allowed & (cols > rows - window)
        scores = scores.masked_fill(~allowed, float("-inf"))
    elif attention_mask.dtype == torch.bool:  # the dtype's minimum, as eager masks: a padding row that sees
        # no key stays finite (uniform), where -inf would make it NaN and NaN reaches real rows through its values
        scores = scores.masked_fill(~attention_mask[:, :, :, : key.shape[2]], torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask[:, :, :, : key.shape[2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout:
        probs = F.dropout(probs, dropout)
    return torch.matmul(probs, value)


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


SWAPPED = ("sdpa", "eager")  # eager: models transformers runs without SDPA (Gemma 2's soft-capped attention)


def use_segment_attention(model) -> str | None:
    """Switch a transformers model (under any PEFT wrapper) to segment attention where it uses
    SDPA or eager attention; returns the implementation to restore, or None if left as it was."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if config is None or previous not in SWAPPED:
        return None
    register()
    config._attn_implementation = NAME
    for sub in model.modules():  # submodules holding their own reference to the config
        sub_config = getattr(sub, "config", None)
        if sub_config is not None and getattr(sub_config, "_attn_implementation", None) == previous:
            sub_config._attn_implementation = NAME
    return previous


def restore_attention(model, previous: str | None) -> None:
    if previous is None:
        return
    for sub in [model, *model.modules()]:
        sub_config = getattr(sub, "config", None)
        if sub_config is not None and getattr(sub_config, "_attn_implementation", None) == NAME:
            sub_config._attn_implementation = previous


def exact_path_note(config, lengths: list[int]) -> str | None:
    """The run's one log line on what takes the exact (slower) attention for this family: every
    sequence under soft-capped scores, else the sequences longer than a sliding window some layer
    uses; None when every sequence takes the fast path."""
    family = getattr(config, "model_type", "model")
    if getattr(config, "attn_logit_softcapping", None):
        return f"{family}: soft-capped attention scores: every sequence takes the exact eager attention (slower)"
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None)
    if window is None or (kinds is not None and "sliding_attention" not in kinds):
        return None
    longer = sum(n > window for n in lengths)
    if not longer:
        return None
    return (
        f"{family}: {longer} of {len(lengths)} training sequences are longer than the {window}-token sliding "
        "window; their windowed layers take the exact eager attention (slower)"
    )


def uses_segments(model) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == NAME
