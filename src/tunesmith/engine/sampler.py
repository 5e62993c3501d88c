"""Which examples go into which batch, deterministically from (seed, epoch).

Weighted mixing rule: in every epoch a source of n examples with weight w contributes
floor(w) full passes plus a seeded random subset of round(frac(w) * n) examples (so w=2 means
each example twice per epoch, w=0.5 a different half each epoch). Examples of similar length are
batched together (sorted within windows of 64 batches, then batches shuffled): less padding,
same data.
"""

from __future__ import annotations

import math
import random

GROUP_BATCHES = 64


class EpochSampler:
    def __init__(self, source_sizes: list[int], weights: list[float], lengths: list[int], batch_size: int, seed: int):
        self.sizes, self.weights, self.lengths = source_sizes, weights, lengths
        self.batch_size, self.seed = batch_size, seed
        self.offsets = [sum(source_sizes[:i]) for i in range(len(source_sizes))]

    def epoch_examples(self, epoch: int) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        chosen: list[int] = []
        for offset, n, w in zip(self.offsets, self.sizes, self.weights):
            whole, frac = math.floor(w), w - math.floor(w)
            chosen += list(range(offset, offset + n)) * whole
            chosen += rng.sample(range(offset, offset + n), round(frac * n))
        rng.shuffle(chosen)
        return chosen

    def batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch + 7_919)
        order = self.epoch_examples(epoch)
        window = self.batch_size * GROUP_BATCHES
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def batches_per_epoch(self) -> int:
        n = sum(math.floor(w) * s + round((w - math.floor(w)) * s) for s, w in zip(self.sizes, self.weights))
        window = self.batch_size * GROUP_BATCHES
        full, rest = divmod(n, window)
        return full * GROUP_BATCHES + math.ceil(rest / self.batch_size)
