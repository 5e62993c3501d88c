"""Supervised fine-tuning: next-token cross-entropy on the assistant tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.data.chat import IGNORE, encode_chat
from tunesmith.data.records import Example
from tunesmith.methods.base import token_logprob_inputs


class SFT:
    name = "sft"

    def __init__(self, config):
        self.max_length = config.data.max_length
        self.truncated = 0

    def features(self, example: Example, tokenizer) -> dict | None:
        enc = encode_chat(tokenizer, example.messages, self.max_length)
        self.truncated += enc.truncated
        if all(label == IGNORE for label in enc.labels[1:]):
            return None  # truncation removed every trained token
        return {"input_ids": enc.input_ids, "labels": enc.labels}

    def collate(self, features: list[dict], tokenizer) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        pad = tokenizer.pad_token_id
        ids = torch.full((len(features), width), pad, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        n_items = int((labels[:, 1:] != IGNORE).sum())
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "n_items": n_items, "n_tokens": int(mask.sum())}

    def loss(self, model, batch: dict):
        head, rows, targets = token_logprob_inputs(model, batch)
        logits = (head(rows) if head is not None else rows).float()
        total = F.cross_entropy(logits, targets, reduction="sum")
        correct = (logits.detach().argmax(-1) == targets).sum()
        return total, {"token_accuracy": float(correct)}
