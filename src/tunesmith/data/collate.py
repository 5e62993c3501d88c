"""Token features -> a padded batch of tensors: the batch every method that trains on token
sequences builds, and the sequence boundaries segment attention needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tunesmith.data.chat import IGNORE

if TYPE_CHECKING:
    from tunesmith.data.batch import Batch

# Packed rows are padded to a multiple of this many tokens. Their lengths otherwise differ by a few
# tokens from pass to pass, and every new shape costs memory that stays: the CPU matmul library
# keeps kernels built for each, and the heap fragments over tensors a little larger or smaller each
# time. Rounded, nearly every pass of a packed run has one shape: packed LoRA on the bundled model
# peaks ~220 MiB lower and runs ~5% faster (bench/README.md); the padding adds no loss and no token
# attends to it. Shared-prefix rows (DPO, GRPO) and unpacked batches keep their own width.
PACKED_WIDTH_MULTIPLE = 64


def row_segments(feature: dict[str, Any]) -> list[tuple[int, int]]:
    """[start, end) of each sequence in one unpadded row: packed rows restart `position_ids` at 0."""
    n = len(feature["input_ids"])
    positions = feature.get("position_ids")
    if positions is None:
        return [(0, n)]
    starts = [i for i, p in enumerate(positions) if p == 0]
    return list(zip(starts, starts[1:] + [n]))


def collate_tokens(features: list[dict[str, Any]], pad: int) -> Batch:
    """Right-padded batch of token features. Packed rows (with `position_ids`) get no attention
    mask: the model derives the per-example causal mask from the restarting positions. Features
    marked `anchor` (replay data) set `anchor` on their trained tokens, for KL anchoring. A
    feature may say where its sequences are (`segments`, and `segment_prefixes` for sequences
    that see an earlier one first) where its positions do not restart at each."""
    width = max(len(f["input_ids"]) for f in features)
    packed = "position_ids" in features[0]
    if packed and "segments" not in features[0]:  # rows of whole examples (data/packing.py), not shared-prefix rows
        width = -(-width // PACKED_WIDTH_MULTIPLE) * PACKED_WIDTH_MULTIPLE
    ids = torch.full((len(features), width), pad, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    anchor = torch.zeros((len(features), width), dtype=torch.bool)
    positions = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        labels[i, :n] = torch.tensor(f["labels"])
        mask[i, :n] = 1
        if "anchor" in f:
            anchor[i, :n] = torch.tensor(f["anchor"]) if isinstance(f["anchor"], list) else bool(f["anchor"])
        if packed:  # padding is one more short sequence of its own
            positions[i, :n] = torch.tensor(f["position_ids"])
            positions[i, n:] = torch.arange(width - n)
    batch: Batch = {
        "input_ids": ids,
        "attention_mask": None if packed else mask,
        "labels": labels,
        "n_items": int((labels[:, 1:] != IGNORE).sum()),
        "n_tokens": int(mask.sum()),
        "segments": [f["segments"] if "segments" in f else row_segments(f) for f in features],
    }  # where each sequence is, for segment attention
    if any("segment_prefixes" in f for f in features):  # replies packed after a prompt they share
        batch["segment_prefixes"] = [
            f.get("segment_prefixes") or [None] * len(spans) for f, spans in zip(features, batch["segments"])
        ]
    if anchor.any():
        batch["anchor"] = anchor
    if packed:
        batch["position_ids"] = positions
    return batch


def feature_length(feature: dict[str, Any]) -> int:
    """Tokens a feature puts through the model, for batching examples of similar length: its
    `input_ids`, or the `length` a method with nested features (pairs, groups) records."""
    return feature["length"] if "length" in feature else len(feature["input_ids"])
