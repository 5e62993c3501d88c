"""Supervised fine-tuning: next-token cross-entropy on the trained tokens (assistant turns by default)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from tunesmith.data.chat import IGNORE, encode_example
from tunesmith.data.collate import collate_tokens
from tunesmith.engine.method import Method, Setup
from tunesmith.errors import UserError
from tunesmith.methods.logprobs import head_token_logprobs, token_logprob_inputs
from tunesmith.methods.self_distill import SelfDistillation

if TYPE_CHECKING:
    from torch.nn import Module
    from transformers import PreTrainedTokenizerBase

    from tunesmith.config.schema import RunConfig
    from tunesmith.data.batch import Batch
    from tunesmith.data.layouts import Example


class SFT(Method):
    """Supervised fine-tuning: cross-entropy on the tokens `data.train_on` selects, plus KL to the
    starting model on replay tokens when `forgetting.kl` > 0, plus on-policy self-distillation
    from the starting model on general prompts with `forgetting.self_distill`
    (`methods/self_distill.py`; the run sets its prompts and `kl_anchor`, the starting model)."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.max_length = config.data.max_length
        self.train_on = config.data.train_on
        self.train_reasoning = config.data.train_on_reasoning
        self.drop_long = config.data.truncation == "drop"
        self.kl_weight = config.forgetting.kl
        sd = config.forgetting.self_distill
        self.self_distill = SelfDistillation(sd, config.train.seed) if sd is not None else None
        self.logs_samples = self.logs_samples or self.self_distill is not None
        self.tokenizer: PreTrainedTokenizerBase | None = None  # set in prepare: replies are sampled in the loss

    def features(self, example: Example, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any] | None:
        if example.layout == "prompt":
            raise UserError(
                f"{example.source}: a prompt alone has no response to learn from; "
                "prompt-only data is for methods that generate their own (grpo, rloo)"
            )
        enc = encode_example(tokenizer, example, self.max_length, self.train_on, self.train_reasoning)
        if enc.truncated and self.drop_long:
            self.dropped += 1
            return None
        self.truncated += enc.truncated
        if all(label == IGNORE for label in enc.labels[1:]):
            self.dropped += 1
            return None  # truncation removed every trained token
        return {"input_ids": enc.input_ids, "labels": enc.labels}

    def prepare(self, setup: Setup) -> None:
        self.tokenizer = setup.tokenizer

    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        batch: Batch = collate_tokens(features, tokenizer.pad_token_id)
        if self.self_distill is not None:
            batch["general"] = {"prompts": self.self_distill.choose(features)}  # replies sampled in the loss
        return batch

    def rollout(self, model: Module, batch: Batch) -> None:
        """Training only (validation measures the task alone): the model's replies to the batch's
        general prompts, for self-distillation."""
        if "general" in batch and model.training:
            assert self.self_distill is not None and self.tokenizer is not None  # set up with `general`
            self.self_distill.sample(model, self.tokenizer, batch["general"])

    def loss(self, model: Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        total, metrics = self.task_loss(model, batch)
        if "general" in batch and model.training:  # validation measures the task alone
            assert self.self_distill is not None and self.tokenizer is not None and self.kl_anchor is not None
            term, more = self.self_distill.loss(model, self.kl_anchor, self.tokenizer, batch)
            total = total + term
            metrics.update(more)
        return total, metrics

    def task_loss(self, model: Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The summed loss on the batch's own tokens, and its metrics."""
        head, rows, targets = token_logprob_inputs(model, batch)
        anchored = self.kl_anchor is not None and "anchor" in batch
        if anchored:  # KL anchoring needs whole distributions
            logits = (head(rows) if head is not None else rows).float()
            total = F.cross_entropy(logits, targets, reduction="sum")
            correct = logits.detach().argmax(-1) == targets
        else:
            logp, correct = head_token_logprobs(head, rows, targets)
            total = -logp.sum()
        metrics = {"token_accuracy": float(correct.sum())}
        if anchored:
            kl = self._kl_to_reference(model, batch, logits)
            total = total + self.kl_weight * kl
            metrics["kl"] = float(kl.detach())
        return total, metrics

    def _kl_to_reference(self, model: Module, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """KL(reference || model) summed over the trained tokens of replay examples: the tuned
        model must keep the base model's whole next-token distribution there, not just its argmax."""
        at_loss = batch["labels"][:, 1:] != IGNORE
        anchored = batch["anchor"][:, 1:][at_loss]
        if not anchored.any():
            return logits.new_zeros(())
        assert self.kl_anchor is not None  # anchored batches come with an anchor
        ref = self.kl_anchor.logits(model, batch)[anchored]
        ref_logp = F.log_softmax(ref, -1)
        return F.kl_div(F.log_softmax(logits[anchored], -1), ref_logp, log_target=True, reduction="sum")
