"""The KV cache of every row in one block per layer: the budget, allocated once.

Each layer holds keys and values as [kv heads, capacity, head dim]; a row is given a contiguous
range of `capacity` token slots (its prompt plus `max_tokens`) when it is admitted and gives it
back when it retires. Admission is by tokens, so the memory the cache can use is the budget and
never more (`peak_tokens` records how much was held at once). The tensors are allocated empty:
the operating system backs a page only once a row has written to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def bytes_per_token(config, dtype: torch.dtype) -> int:
    """Key and value bytes one token takes over all layers of a transformers model's config."""
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers * 2 * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


@dataclass
class Span:
    """A row's token slots: [start, start + size) of every layer's block."""

    start: int
    size: int


class KVArena:
    def __init__(self, tokens: int, dtype: torch.dtype, device: torch.device | str = "cpu"):
        if tokens < 1:
            raise ValueError("a KV arena needs room for at least one token")
        self.tokens, self.dtype, self.device = tokens, dtype, torch.device(device)
        self.keys: dict[int, torch.Tensor] = {}  # layer -> [kv heads, tokens, head dim]
        self.values: dict[int, torch.Tensor] = {}
        self._free: list[Span] = [Span(0, tokens)]  # sorted by start, never adjacent
        self.used = 0
        self.peak_tokens = 0

    # --- token slots ----------------------------------------------------------------------------
    def allocate(self, size: int) -> Span | None:
        """A free range of `size` slots (first fit), or None while none is free."""
        for i, free in enumerate(self._free):
            if free.size >= size:
                span = Span(free.start, size)
                if free.size == size:
                    del self._free[i]
                else:
                    self._free[i] = Span(free.start + size, free.size - size)
                self.used += size
                self.peak_tokens = max(self.peak_tokens, self.used)
                return span
        return None

    def release(self, span: Span) -> None:
        """Give a row's slots back (merged with free neighbours)."""
        self.used -= span.size
        spans = sorted([*self._free, Span(span.start, span.size)], key=lambda s: s.start)
        merged: list[Span] = []
        for s in spans:
            if merged and merged[-1].start + merged[-1].size == s.start:
                merged[-1] = Span(merged[-1].start, merged[-1].size + s.size)
            else:
                merged.append(s)
        self._free = merged

    # --- the blocks -----------------------------------------------------------------------------
    def block(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s key and value blocks, made on first use in the shape and dtype `like`
        [kv heads, n, head dim] has (under autocast keys come in the autocast dtype)."""
        keys = self.keys.get(layer)
        if keys is None:
            shape = (like.shape[0], self.tokens, like.shape[-1])
            keys = self.keys[layer] = torch.empty(shape, dtype=like.dtype, device=self.device)
            self.values[layer] = torch.empty(shape, dtype=like.dtype, device=self.device)
        elif keys.shape[0] != like.shape[0] or keys.shape[-1] != like.shape[-1]:
            raise ValueError(f"layer {layer}: keys of shape {tuple(like.shape)} for a block of {tuple(keys.shape)}")
        return keys, self.values[layer]

    def copy(self, source: Span, target: Span, n: int) -> None:
        """The first `n` cached tokens of `source` into `target` in every layer (a prompt computed
        once for rows that share it)."""
        for layer, keys in self.keys.items():
            values = self.values[layer]
            keys[:, target.start : target.start + n] = keys[:, source.start : source.start + n]
            values[:, target.start : target.start + n] = values[:, source.start : source.start + n]
