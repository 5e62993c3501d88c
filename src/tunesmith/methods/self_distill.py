"""On-policy self-distillation against forgetting (`forgetting.self_distill`).

With every task batch the model being tuned answers a few general prompts itself (sampled on the
generation engine, no gradients); the starting model (`ReferenceModel`: the adapters switched
off, or a frozen copy for full fine-tuning) scores every token of those replies with its whole
next-token distribution, and the loss adds `weight` × reverse KL(tuned ‖ starting) summed over
them, scaled to the task batch's trained tokens. Unlike replay, which trains on the starting
model's replies, the tuned model is corrected where its own replies go; unlike `forgetting.kl`,
it needs no replay data. Which prompts ride with a batch is a hash of the batch and the seed,
so a resumed run chooses, samples and scores the same.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.eval.generate import Sampling
from tunesmith.methods.distill_losses import chunked, divergence
from tunesmith.methods.logprobs import head_token_logprobs, token_logprob_inputs
from tunesmith.methods.rollout import batch_digest, sample_records, sample_replies

if TYPE_CHECKING:
    from torch.nn import Module
    from transformers import PreTrainedTokenizerBase

    from tunesmith.config.schema import SelfDistillConfig
    from tunesmith.data.batch import Batch
    from tunesmith.engine.method import ReferenceLogits


class SelfDistillation:
    def __init__(self, config: SelfDistillConfig, seed: int) -> None:
        self.weight, self.per_batch, self.seed = config.weight, config.per_batch, seed
        self.sampling = Sampling(max_new_tokens=config.max_new_tokens, temperature=config.temperature)
        self.prompts: list[list[int]] = []  # the general prompts' token ids, set by the run

    def choose(self, features: list[dict[str, Any]]) -> list[list[int]]:
        """The general prompts that ride with this batch: the same however often it comes."""
        rng = random.Random(batch_digest(features, f"self-distill {self.seed}"))
        return [self.prompts[i] for i in rng.sample(range(len(self.prompts)), min(self.per_batch, len(self.prompts)))]

    def sample(self, model: Module, tokenizer: PreTrainedTokenizerBase, general: dict[str, Any]) -> None:
        """The model's replies to a batch's general prompts (`general["prompts"]`), as it is now."""
        general["batch"] = sample_replies(model, tokenizer, general["prompts"], self.sampling)[0]

    def loss(
        self, model: Module, reference: ReferenceLogits, tokenizer: PreTrainedTokenizerBase, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """weight × the summed reverse KL on the model's replies to the batch's general prompts
        (sampled by `sample`), scaled to the batch's trained tokens; the log records of those
        replies go to the batch."""
        sampled = batch["general"]["batch"]
        if sampled["n_items"] == 0:  # every reply empty: nothing to compare
            return next(p for p in model.parameters() if p.requires_grad).sum() * 0.0, {"self_distill": 0.0}
        head, rows, targets = token_logprob_inputs(model, sampled)
        project: Callable[[torch.Tensor], torch.Tensor] = head if head is not None else (lambda r: r)
        ref_logits = reference.logits(model, sampled)
        vocab = ref_logits.shape[-1]

        def kl(r: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            return divergence(project(r)[:, :vocab], ref, "reverse_kl").sum()

        kl_sum = chunked(kl, rows, ref_logits)
        if "samples" in batch:
            with torch.no_grad():
                logp = head_token_logprobs(head, rows, targets)[0].float()
                ref_logp = ref_logits.float().log_softmax(-1).gather(1, targets[:, None])[:, 0]
                per_token = torch.cat(
                    [
                        divergence(project(rows[i : i + 256])[:, :vocab].float(), ref_logits[i : i + 256], "reverse_kl")
                        for i in range(0, rows.shape[0], 256)
                    ]
                )
            batch["samples"].extend(
                {"kind": "self_distill", **r} for r in sample_records(tokenizer, sampled, logp, ref_logp, per_token)
            )
        scale = self.weight * batch["n_items"] / sampled["n_items"]
        # logged per item of the task batch, as every metric: the mean reverse KL per sampled token, weighted
        return kl_sum * scale, {"self_distill": float(kl_sum.detach()) * scale}
