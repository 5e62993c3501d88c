"""A step's data: batches drawn from a data position on, each split into passes of bounded size,
and under torchrun each rank's share in as many passes as every other rank's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tunesmith.data.packing import pack_features
from tunesmith.engine.distributed import Ranks, share

if TYPE_CHECKING:
    import torch

    from tunesmith.engine.sampler import EpochSampler


def batch_stream(sampler: EpochSampler, epoch: int, index: int) -> Iterator[tuple[list[Any], tuple[int, int]]]:
    """Batches (as example indices) from a data position onwards, with the position after each."""
    while True:
        batches = sampler.batches(epoch)
        for i in range(index, len(batches)):
            nxt = (epoch, i + 1) if i + 1 < len(batches) else (epoch + 1, 0)
            yield batches[i], nxt
        epoch, index = epoch + 1, 0


def batch_features(batch: list[Any], features: list[dict[str, Any]], pack_length: int | None) -> list[dict[str, Any]]:
    """The features of a batch of example indices, or of a batch of packed rows."""
    if pack_length is None:
        return [features[i] for i in batch]
    return [pack_features([features[i] for i in row]) for row in batch]


CPU_TOKENS_PER_PASS = 1024  # bench/README.md: as fast as 2048 or 4096 with a third less memory


def pass_budget(configured: int | None, dev: torch.device) -> int | None:
    if configured is None:
        return CPU_TOKENS_PER_PASS if dev.type == "cpu" else None
    return configured or None  # 0: no limit


def split_by_tokens(batch: list[Any], lengths: list[int], budget: int | None) -> list[list[Any]]:
    """The batch (example indices, or packed rows of them) in consecutive parts whose padded size
    (rows x longest row) stays within `budget` tokens; a longer single row is a part of its own.
    The engine accumulates the parts into one optimizer step: the same gradient, with activation
    memory and tensor sizes bounded (on a CPU, tensors over 32 MB are mapped fresh from the OS and
    page-faulted on every step)."""
    if budget is None:
        return [batch]
    size = [sum(lengths[i] for i in row) if isinstance(row, list) else lengths[row] for row in batch]
    parts: list[list[Any]] = []
    current: list[Any] = []
    longest = 0
    for row, n in zip(batch, size):
        if current and (len(current) + 1) * max(longest, n) > budget:
            parts.append(current)
            current, longest = [], 0
        current.append(row)
        longest = max(longest, n)
    return parts + [current]


def rank_passes(batch: list[Any], lengths: list[int], budget: int | None, ranks: Ranks) -> list[tuple[list[Any], bool]]:
    """This rank's passes over its share of a global batch, as (part, ghost): as many as the rank
    with the most, so that collectives line up; a ghost pass repeats a part with weight zero."""
    shares = [share(batch, Ranks(r, ranks.world)) for r in range(ranks.world)]
    every = [split_by_tokens(mine, lengths, budget) if mine else [] for mine in shares]
    parts, most = every[ranks.rank], max(len(p) for p in every)
    filler = parts[0] if parts else batch[:1]
    return [(p, False) for p in parts] + [(filler, True)] * (most - len(parts))
