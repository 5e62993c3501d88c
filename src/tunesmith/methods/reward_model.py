"""Reward model: one scalar per conversation, trained on preference pairs (Bradley-Terry).

The model is the base with a new linear head (`AutoModelForSequenceClassification`, one label),
read at the conversation's last real token. The loss is −log σ(s_chosen − s_rejected − m), with
the pair's optional `margin` m from the data (how much better the chosen response was judged, as
in Llama 2). Metrics: pairwise accuracy (the chosen response scored higher) and the mean margin.
The exported model scores conversations for online RL (`methods/rl_rewards.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tunesmith.data.chat import encode_chat
from tunesmith.data.collate import collate_tokens
from tunesmith.engine.method import Method
from tunesmith.errors import UserError
from tunesmith.methods.preference_losses import bradley_terry_loss
from tunesmith.model.peft_wrapping import unwrap

if TYPE_CHECKING:
    from torch.nn import Module
    from transformers import PreTrainedTokenizerBase

    from tunesmith.config.schema import RunConfig
    from tunesmith.data.batch import Batch
    from tunesmith.data.layouts import Example


class RewardModelling(Method):
    head = "score"  # the run builds a scoring model, not a language model

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.max_length = config.data.max_length

    def _conversation(self, tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> dict[str, Any]:
        enc = encode_chat(tokenizer, messages, self.max_length, "all")
        self.truncated += enc.truncated
        return {"input_ids": enc.input_ids, "labels": enc.input_ids}

    def features(self, example: Example, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any] | None:
        if example.rejected is None:
            raise UserError(
                f"{example.source}: method reward trains on pairs ({{prompt, chosen, rejected}}), "
                f"this record is a single {example.layout} conversation"
            )
        assert example.messages is not None  # a pair has a conversation on each side
        chosen = self._conversation(tokenizer, example.messages)
        rejected = self._conversation(tokenizer, example.rejected)
        if chosen["input_ids"] == rejected["input_ids"]:
            self.dropped += 1
            return None  # identical after truncation: nothing to tell apart
        return {
            "chosen": chosen,
            "rejected": rejected,
            "margin": example.margin or 0.0,
            "length": len(chosen["input_ids"]) + len(rejected["input_ids"]),
        }

    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        rows = [f["chosen"] for f in features] + [f["rejected"] for f in features]
        batch = collate_tokens(rows, tokenizer.pad_token_id)
        batch.pop("labels")
        batch["margin"] = torch.tensor([f["margin"] for f in features], dtype=torch.float32)
        batch["n_items"] = len(features)  # pairs
        return batch

    def loss(self, model: Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch["attention_mask"]
        assert mask is not None  # pairs are padded, not packed
        scores = sequence_scores(model, batch["input_ids"], mask)
        n = batch["n_items"]
        chosen, rejected = scores[:n], scores[n:]
        losses = bradley_terry_loss(chosen, rejected, batch["margin"].to(scores.device))
        diff = (chosen - rejected).detach()
        metrics = {
            "accuracy": float((diff > 0).sum()),
            "margin": float(diff.sum()),
            "score_chosen": float(chosen.detach().sum()),
            "score_rejected": float(rejected.detach().sum()),
        }
        return losses.sum(), metrics


def score_head(model: Module) -> torch.nn.Module:
    """The scalar head of a sequence-classification model (PEFT keeps a trained copy of it)."""
    base = unwrap(model)
    head = getattr(base, "score", None)
    if head is None:
        raise UserError(f"{type(base).__name__} has no 'score' head: not a reward model")
    assert isinstance(head, torch.nn.Module)
    return head


def sequence_scores(model: Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The head's score at each right-padded row's last real token. Read there by position from the
    attention mask, not by looking for the pad token (which is often the end-of-turn token too)."""
    base = unwrap(model)
    decoder = getattr(base, base.base_model_prefix)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    last = attention_mask.sum(1) - 1
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    scores: torch.Tensor = score_head(model)(pooled).squeeze(-1).float()
    return scores
