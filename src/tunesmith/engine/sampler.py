"""Which examples go into which batch, deterministically from (seed, epoch).

Weighted mixing rule: in every epoch a source of n examples with weight w contributes
floor(w) full passes plus a seeded random subset of round(frac(w) * n) examples (so w=2 means
each example twice per epoch, w=0.5 a different half each epoch). Examples of similar length are
batched together (sorted within windows of 64 batches, then batches shuffled): less padding,
same data. With packing, the epoch's examples are packed into rows first and the rows batched.
"""

from __future__ import annotations

import math
import random
from typing import Any

from tunesmith.data.packing import pack_rows

GROUP_BATCHES = 64


class EpochSampler:
    """Batches of example indices; with `pack_length`, batches of rows, each row a list of indices."""

    def __init__(
        self,
        source_sizes: list[int],
        weights: list[float],
        lengths: list[int],
        batch_size: int,
        seed: int,
        pack_length: int | None = None,
    ) -> None:
        self.sizes, self.weights, self.lengths = source_sizes, weights, lengths
        self.batch_size, self.seed, self.pack_length = batch_size, seed, pack_length
        self.offsets = [sum(source_sizes[:i]) for i in range(len(source_sizes))]
        self._per_epoch: int | None = None

    def epoch_examples(self, epoch: int) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        chosen: list[int] = []
        for offset, n, w in zip(self.offsets, self.sizes, self.weights):
            whole, frac = math.floor(w), w - math.floor(w)
            chosen += list(range(offset, offset + n)) * whole
            chosen += rng.sample(range(offset, offset + n), round(frac * n))
        rng.shuffle(chosen)
        return chosen

    def batches(self, epoch: int) -> list[list[Any]]:
        rng = random.Random(self.seed * 1_000_003 + epoch + 7_919)
        order = self.epoch_examples(epoch)
        if self.pack_length is not None:
            rows = pack_rows(order, self.lengths, self.pack_length)
            rng.shuffle(rows)
            return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        window = self.batch_size * GROUP_BATCHES
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def batches_per_epoch(self) -> int:
        """Counted on epoch 0 (with packing, later epochs may differ by a row or two)."""
        if self._per_epoch is None:
            self._per_epoch = len(self.batches(0))
        return self._per_epoch
