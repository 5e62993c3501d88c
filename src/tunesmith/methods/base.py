"""The one face every method shows the run and the engine: `Method`.

The engine never asks which method it runs: it turns examples into features, features into
batches, and a batch into a summed loss. Each batch says how many items its loss sums over
(`batch["n_items"]`: loss tokens for SFT, pairs for preference losses), so the engine can
normalise over a whole gradient-accumulation window before the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch

from tunesmith.engine.distributed import is_sharded
from tunesmith.methods.head_logprobs import head_logprobs
from tunesmith.model.peft_wrapping import is_prompt_learning, unwrap
from tunesmith.model.segment_attention import uses_segments


class Method:
    """What a training method is, hook by hook in the order a run calls them. A new method
    subclasses this, sets `name`, implements `features`, `collate` and `loss`, overrides what
    else it needs, and is registered in `methods/__init__.py`.

    Attributes the run reads: `head` ("causal": a language model; "score": a scalar head, as a
    reward model needs), `steps_per_batch` (optimizer steps on each batch: > 1 for PPO-style reuse
    of sampled replies), and the counts `truncated` / `dropped` that `features` keeps of examples
    cut to `data.max_length` or left out. `kl_anchor` is set by the run when `forgetting.kl` > 0:
    the starting model, whose distributions on replay tokens a method may anchor to (SFT does).
    """

    name: str = ""
    head: str = "causal"
    steps_per_batch: int = 1

    def __init__(self, config) -> None:
        self.truncated = 0
        self.dropped = 0
        self.kl_anchor = None  # a ReferenceModel, set by the run when forgetting.kl > 0

    def features(self, example: Any, tokenizer) -> dict | None:
        """One example -> model-ready features, or None to drop it (e.g. nothing left to learn)."""
        raise NotImplementedError

    def collate(self, features: list[dict], tokenizer) -> dict:
        """Features -> a padded batch of tensors, with `n_items` set."""
        raise NotImplementedError

    def prepare(self, model, tokenizer, features: list[dict], run_dir, cfg, console) -> None:
        """Once, after the model is built and before the first step (a reference model, a teacher,
        reward functions); `features` are the training and validation features."""

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed loss over the batch's `n_items`, and metrics to log (sums, divided by the engine)."""
        raise NotImplementedError


def feature_length(feature: dict) -> int:
    """Tokens a feature puts through the model, for batching examples of similar length: its
    `input_ids`, or the `length` a method with nested features (pairs, groups) records."""
    return feature["length"] if "length" in feature else len(feature["input_ids"])


class TiedHead(torch.nn.Module):
    """An output head that multiplies by the input embeddings' matrix. Under FSDP the tied head's
    own reference holds only this rank's shard of that matrix; the embeddings' reference is the
    gathered matrix while the decoder (the root, which ran just before) keeps it gathered, up to
    the end of the backward pass."""

    bias = None

    def __init__(self, embeddings: torch.nn.Module):
        super().__init__()
        self.embeddings = embeddings

    @property
    def weight(self) -> torch.Tensor:
        return self.embeddings.weight

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(rows, self.weight)


def token_logprob_inputs(model, batch: dict):
    """Final hidden states at the positions that carry loss, and the tokens they predict.

    Only those rows go through the output projection: on chat data most positions are prompt,
    and the vocabulary projection is the largest matmul of a small model.
    """
    base = unwrap(model)
    head = base.get_output_embeddings()
    if head is not None and is_sharded(head.weight):  # FSDP, the head tied to the sharded embeddings
        head = TiedHead(base.get_input_embeddings())
    labels = batch["labels"]
    targets_mask = labels[:, 1:] != -100
    # no KV cache in training; packed batches carry position_ids and no attention mask
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "position_ids": batch.get("position_ids"), "use_cache": False}
    if head is None or is_prompt_learning(model):
        # no separable head, or virtual tokens that only the PEFT forward adds: full logits
        logits = model(**inputs).logits[:, -labels.shape[1]:]  # prompt tuning's virtual positions come first
        return None, logits[:, :-1][targets_mask], labels[:, 1:][targets_mask]
    if batch.get("segments") is not None and uses_segments(base):
        inputs["segments"] = batch["segments"]
    hidden = base.get_decoder()(**inputs).last_hidden_state
    return head, hidden[:, :-1][targets_mask], labels[:, 1:][targets_mask]


def token_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every labelled token (flat, in row-major order) and the row each token
    belongs to. Logits exist only at labelled positions."""
    head, rows, targets = token_logprob_inputs(model, batch)
    token_logps = head_token_logprobs(head, rows, targets)[0]
    row_of_token = (batch["labels"][:, 1:] != -100).nonzero()[:, 0]
    return token_logps, row_of_token


def head_token_logprobs(head, rows: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each target, whether it is the argmax) from `token_logprob_inputs`'
    rows: through a bias-free head in chunks (`head_logprobs`), else from the logits given."""
    if head is not None and getattr(head, "bias", None) is None and isinstance(head, (torch.nn.Linear, TiedHead)):
        return head_logprobs(rows, head.weight, targets)
    logits = (head(rows) if head is not None else rows).float()
    logp = logits.log_softmax(-1)
    return logp.gather(1, targets[:, None])[:, 0], logp.detach().argmax(-1) == targets


def per_row_sum(values: torch.Tensor, row_of_token: torch.Tensor, n_rows: int) -> torch.Tensor:
    return torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, row_of_token, values)


def sequence_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's labelled tokens, their count): what preference and
    policy-gradient losses compare."""
    token_logps, row_of_token = token_logprobs(model, batch)
    mask = batch["labels"][:, 1:] != -100
    return per_row_sum(token_logps, row_of_token, batch["labels"].shape[0]), mask.sum(1)
