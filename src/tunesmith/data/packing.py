"""Exact packing: several examples in one row, with attention that never crosses examples.

Each row concatenates whole examples up to `max_length`; `position_ids` restart at 0 for every
example. Called without an attention mask and without a KV cache, transformers builds the
block-diagonal causal mask from those restarts, so every token sees exactly what it would see
alone. The first token of each example gets no label: it must not be predicted from the end of
the previous, unrelated example.
"""

from __future__ import annotations

from typing import Any

import torch

from tunesmith.data.chat import IGNORE

WINDOW = 1024  # examples considered together when filling rows


def pack_rows(order: list[int], lengths: list[int], max_length: int) -> list[list[int]]:
    """Group example indices into rows of at most `max_length` tokens (best fit, longest first,
    within windows of the given order so that epochs still differ)."""
    rows: list[list[int]] = []
    for start in range(0, len(order), WINDOW):
        window = sorted(order[start : start + WINDOW], key=lambda i: -lengths[i])
        fill: list[int] = []  # tokens used per open row of this window
        first = len(rows)
        for i in window:
            best = None
            for r, used in enumerate(fill):
                if used + lengths[i] <= max_length and (best is None or used > fill[best]):
                    best = r
            if best is None:
                rows.append([i])
                fill.append(lengths[i])
            else:
                rows[first + best].append(i)
                fill[best] += lengths[i]
    return rows


def pack_features(features: list[dict[str, Any]]) -> dict[str, Any]:
    """One packed row from token-level features (`input_ids`, `labels`, optional `anchor`)."""
    ids, labels, positions, anchor = [], [], [], []
    for f in features:
        n = len(f["input_ids"])
        ids += f["input_ids"]
        labels += [IGNORE] + list(f["labels"][1:])
        positions += list(range(n))
        anchor += [bool(f.get("anchor", False))] * n
    row: dict[str, Any] = {"input_ids": ids, "labels": labels, "position_ids": positions}
    if any(anchor):  # replay examples keep their KL-anchoring mark token by token
        row["anchor"] = anchor
    for key, value in features[0].items():  # per-trained-position tensors (a teacher's top-k) follow in order
        if torch.is_tensor(value):
            row[key] = torch.cat([f[key] for f in features])
    return row
