"""Sequences that begin alike, packed in one row that holds their common beginning once.

A group's replies to one prompt (GRPO) and a preference pair's two responses (DPO) repeat the
same prompt tokens, none of which carries loss. Packed in one row, the prompt but its last token
comes once, then each sequence from that last token on, at the positions it has in a row of its
own, seeing the prompt's keys first (`segment_prefixes`, for segment attention). Repeating the
last prompt token in every sequence keeps the output that predicts a sequence's first trained
token right before that token, as the one-position shift of the log-probabilities expects; each
sequence's log-probabilities are then those of its own row, and every pass computes the prompt
once for all of them.
"""

from __future__ import annotations

from typing import Any

from tunesmith.data.chat import IGNORE


def shareable(sequences: list[tuple[list[int], list[int]]]) -> int:
    """How many leading tokens every sequence (input ids, labels) has in common and trains on none of."""
    first = sequences[0][0]
    n = min(len(ids) for ids, _ in sequences)
    for ids, labels in sequences:
        trained = next((t for t, label in enumerate(labels) if label != IGNORE), len(labels))
        n = min(n, trained)
        n = next((t for t in range(n) if ids[t] != first[t]), n)
    return n


def shared_prefix_row(sequences: list[tuple[list[int], list[int]]], shared: int) -> dict[str, Any]:
    """One packed row (a feature for `collate_tokens`) of sequences (input ids, labels) whose first
    `shared` tokens (at least one) are the same and untrained, as `shareable` finds them."""
    if not 1 <= shared <= shareable(sequences):
        raise ValueError(f"the sequences do not share {shared} untrained leading tokens")
    kept = shared - 1  # the prompt but its last token, once
    ids, labels, positions = list(sequences[0][0][:kept]), [IGNORE] * kept, list(range(kept))
    segments: list[tuple[int, int]] = [(0, kept)] if kept else []
    prefixes: list[int | None] = [None] if kept else []
    for seq_ids, seq_labels in sequences:
        start = len(ids)
        ids += seq_ids[kept:]
        labels += seq_labels[kept:]
        positions += range(kept, len(seq_ids))
        segments.append((start, len(ids)))
        prefixes.append(0 if kept else None)
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": positions,
        "segments": segments,
        "segment_prefixes": prefixes,
    }


def trained_tokens(labels: list[int]) -> int:
    """Tokens a sequence trains on (the first position predicts nothing)."""
    return sum(label != IGNORE for label in labels[1:])
