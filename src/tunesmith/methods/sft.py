"""Supervised fine-tuning: next-token cross-entropy on the trained tokens (assistant turns by default)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.data.chat import IGNORE, encode_example
from tunesmith.data.layouts import Example
from tunesmith.methods.base import token_logprob_inputs


class SFT:
    name = "sft"

    def __init__(self, config):
        self.max_length = config.data.max_length
        self.train_on = config.data.train_on
        self.drop_long = config.data.truncation == "drop"
        self.truncated = 0  # examples cut to max_length (truncation: truncate)
        self.dropped = 0  # examples left out: too long (truncation: drop) or nothing trained left

    def features(self, example: Example, tokenizer) -> dict | None:
        enc = encode_example(tokenizer, example, self.max_length, self.train_on)
        if enc.truncated and self.drop_long:
            self.dropped += 1
            return None
        self.truncated += enc.truncated
        if all(label == IGNORE for label in enc.labels[1:]):
            self.dropped += 1
            return None  # truncation removed every trained token
        return {"input_ids": enc.input_ids, "labels": enc.labels}

    def collate(self, features: list[dict], tokenizer) -> dict:
        """Right-padded batch. Packed rows (with `position_ids`) get no attention mask: the model
        derives the per-example causal mask from the restarting positions."""
        width = max(len(f["input_ids"]) for f in features)
        pad = tokenizer.pad_token_id
        ids = torch.full((len(features), width), pad, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        packed = "position_ids" in features[0]
        positions = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
            if packed:  # padding is one more short sequence of its own
                positions[i, :n] = torch.tensor(f["position_ids"])
                positions[i, n:] = torch.arange(width - n)
        batch = {"input_ids": ids, "attention_mask": None if packed else mask, "labels": labels,
                 "n_items": int((labels[:, 1:] != IGNORE).sum()), "n_tokens": int(mask.sum())}
        if packed:
            batch["position_ids"] = positions
        return batch

    def loss(self, model, batch: dict):
        head, rows, targets = token_logprob_inputs(model, batch)
        logits = (head(rows) if head is not None else rows).float()
        total = F.cross_entropy(logits, targets, reduction="sum")
        correct = (logits.detach().argmax(-1) == targets).sum()
        return total, {"token_accuracy": float(correct)}
