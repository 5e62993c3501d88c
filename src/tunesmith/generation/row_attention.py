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
from dataclasses import dataclass, field

import torch

from tunesmith.generation.kv_arena import KVArena, Span
from tunesmith.model.segment_attention import exact_attention

NAME = "tunesmith_rows"
SWAPPED = ("sdpa", "eager")
_registered = False
# The longest row's keys from which a decode pass attends row by row rather than with every row's
# keys gathered into one padded batch: the copy grows with rows x the longest row, an SDPA call per
# row costs about 20 µs. Decoding 16 rows with the bundled model, gathered was about 8% faster at
# 96-144 keys, row by row about 5% faster at 192-240 (bench/sampling.py measures both).
PER_ROW_FROM = 160


@dataclass
class RowsPass:
    """What one forward pass writes and reads: per batch row, its slots and how many tokens of
    them are filled before this pass; `sdpa` says whether the model attends with SDPA (else eager).

    A decode pass (one new token per row, several rows) writes every row's new key and value at
    once (`slots`). Rows of few keys then attend together: each row's keys gathered from its slots
    into one padded batch (the gather index and the padding mask made once per pass, the mask per
    sliding window once per window), one SDPA call per layer. Rows of many keys attend one by one
    over views of their slots, since the copy into a padded batch costs more than an SDPA call per
    row (`PER_ROW_FROM`)."""

    arena: KVArena
    spans: list[Span]
    filled: list[int]
    sdpa: bool = True
    lengths: list[int] | None = None  # tokens each row adds in this pass, left-padded to the longest (None: all)
    _slots: torch.Tensor | None = field(default=None, repr=False)
    _index: tuple | None = field(default=None, repr=False)
    _masks: dict = field(default_factory=dict, repr=False)

    def slots(self, device) -> torch.Tensor:
        """The slot each row writes its new token to [rows], for a decode pass."""
        if self._slots is None:
            self._slots = torch.tensor([s.start + f for s, f in zip(self.spans, self.filled)], device=device)
        return self._slots

    def keys_read(self, window: int | None) -> int:
        """The most keys a row of a decode pass attends to (its new token's included)."""
        longest = max(self.filled) + 1
        return longest if window is None else min(longest, window)

    def gather(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(the slots each row reads, padded [rows, longest], the row lengths [rows, 1]) for a
        decode pass."""
        if self._index is None:
            starts = torch.tensor([s.start for s in self.spans], device=device)
            lengths = torch.tensor(self.filled, device=device) + 1
            width = int(lengths.max())
            offsets = torch.arange(width, device=device)
            read = starts[:, None] + torch.minimum(offsets[None, :], lengths[:, None] - 1)  # padding reads a real slot
            self._index = (read, lengths[:, None])
        return self._index

    def mask(self, window: int | None, device) -> torch.Tensor:
        """Which gathered keys each row attends to [rows, 1, 1, longest]: its own, within `window`."""
        if window not in self._masks:
            read, lengths = self.gather(device)
            offsets = torch.arange(read.shape[1], device=device)[None, :]
            allowed = offsets < lengths
            if window is not None:
                allowed = allowed & (offsets >= lengths - window)
            self._masks[window] = allowed[:, None, None, :]
        return self._masks[window]


def row_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, kv_rows=None, **kwargs
):
    """query [rows, heads, n, dim], key/value [rows, kv heads, n, dim] -> ([rows, n, heads, dim], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kv_rows is None:
        raise RuntimeError("row attention runs only inside a generation engine pass (no kv_rows given)")
    window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    keys, values = kv_rows.arena.block(module.layer_idx, key[0])
    n = key.shape[2]
    if n == 1 and len(kv_rows.spans) > 1 and softcap is None and kv_rows.sdpa:
        write = kv_rows.slots(query.device)
        keys[:, write] = key[:, :, 0].transpose(0, 1).to(keys.dtype)
        values[:, write] = value[:, :, 0].transpose(0, 1).to(values.dtype)
        decode = _decode_each if kv_rows.keys_read(window) >= PER_ROW_FROM else _decode_together
        return decode(query, keys, values, kv_rows, window, scale), None
    out = []
    lengths = kv_rows.lengths or [n] * len(kv_rows.spans)
    for b, (span, filled, width) in enumerate(zip(kv_rows.spans, kv_rows.filled, lengths)):
        if filled + width > span.size:
            raise RuntimeError(f"row {b}: {filled + width} tokens for {span.size} slots")
        pad = n - width  # a row shorter than the pass is padded on the left
        at = span.start + filled
        keys[:, at : at + width] = key[b, :, pad:]
        values[:, at : at + width] = value[b, :, pad:]
        k = keys[None, :, span.start : at + width]
        v = values[None, :, span.start : at + width]
        q = query[b : b + 1, :, pad:]
        windowed = window is not None and filled + width > window
        if softcap is not None or windowed or not kv_rows.sdpa or (filled and width > 1):
            part = exact_attention(q, k, v, scale, window=window, softcap=softcap).transpose(1, 2)
        else:  # as transformers runs SDPA for one unpadded sequence: causal over a whole prompt, none for one token
            part = sdpa_attention_forward(module, q, k, v, None, dropout=0.0, scaling=scaling)[0]
        out.append(torch.cat([part.new_zeros(1, pad, *part.shape[2:]), part], 1) if pad else part)
    return torch.cat(out).contiguous(), None


def _grouped(query, kv_heads: int) -> torch.Tensor:
    """query [rows, heads, 1, dim] as [rows, kv heads, heads per kv head, dim]: the query heads
    that share a key/value head go in as that head's query positions (one token each, no causal
    mask). SDPA's fused kernel takes them, where enable_gqa with a mask runs several times slower
    on a CPU; query head h reads key head h // (heads / kv heads) either way."""
    rows, heads, _, dim = query.shape
    return query.reshape(rows, kv_heads, heads // kv_heads, dim)


def _ungrouped(out: torch.Tensor) -> torch.Tensor:
    """[rows, kv heads, heads per kv head, dim] -> [rows, 1, heads, dim], as attention returns it."""
    rows, kv_heads, group, dim = out.shape
    return out.reshape(rows, kv_heads * group, 1, dim).transpose(1, 2).contiguous()


def _decode_each(query, keys, values, kv_rows: RowsPass, window: int | None, scale: float):
    """One new token per row (already written): each row's query over a view of its own slots,
    one SDPA call per row -> [rows, 1, heads, dim]."""
    import torch.nn.functional as F

    grouped = _grouped(query, keys.shape[0])
    out = []
    for b, (span, filled) in enumerate(zip(kv_rows.spans, kv_rows.filled)):
        end = span.start + filled + 1
        start = span.start if window is None else max(span.start, end - window)
        k, v = keys[None, :, start:end].to(query.dtype), values[None, :, start:end].to(query.dtype)
        out.append(F.scaled_dot_product_attention(grouped[b : b + 1], k, v, scale=scale))
    return _ungrouped(torch.cat(out))


def _decode_together(query, keys, values, kv_rows: RowsPass, window: int | None, scale: float):
    """One new token per row (already written): every row's query over its own keys, gathered
    into one padded batch, in one masked SDPA call -> [rows, 1, heads, dim]."""
    import torch.nn.functional as F

    read, _ = kv_rows.gather(query.device)
    rows, longest = read.shape
    flat = read.reshape(-1)  # (index_select copies far faster than indexing with a 2-D index)
    k = (
        keys.index_select(1, flat).view(keys.shape[0], rows, longest, -1).transpose(0, 1)
    )  # [rows, kv heads, longest, dim]
    v = values.index_select(1, flat).view(values.shape[0], rows, longest, -1).transpose(0, 1)
    out = F.scaled_dot_product_attention(
        _grouped(query, keys.shape[0]),
        k.to(query.dtype),
        v.to(query.dtype),
        attn_mask=kv_rows.mask(window, query.device),
        scale=scale,
    )
    return _ungrouped(out)


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
    """Every config object the model's modules hold (found once per model: a forward pass asks)."""
    cached = getattr(model, "_tunesmith_configs", None)
    if cached is not None:
        return cached
    seen, out = set(), []
    for sub in [model, *model.modules()]:
        config = getattr(sub, "config", None)
        if config is not None and id(config) not in seen and hasattr(config, "_attn_implementation"):
            seen.add(id(config))
            out.append(config)
    model._tunesmith_configs = out
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
