"""Log-probabilities of a batch's labelled tokens, as the methods' losses need them.

Only rows that carry loss go through the output head (`token_logprob_inputs`); SFT sums them,
preference and policy-gradient losses compare per-row sums (`sequence_logprobs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tunesmith.data.chat import IGNORE
from tunesmith.engine.distributed import is_sharded
from tunesmith.methods.head_logprobs import head_logprobs
from tunesmith.model.peft_wrapping import is_prompt_learning, unwrap
from tunesmith.model.segment_attention import uses_segments

if TYPE_CHECKING:
    from torch.nn import Module

    from tunesmith.data.batch import Batch


class TiedHead(torch.nn.Module):
    """An output head that multiplies by the input embeddings' matrix. Under FSDP the tied head's
    own reference holds only this rank's shard of that matrix; the embeddings' reference is the
    gathered matrix while the decoder (the root, which ran just before) keeps it gathered, up to
    the end of the backward pass."""

    bias = None

    def __init__(self, embeddings: torch.nn.Embedding) -> None:
        super().__init__()
        self.embeddings = embeddings

    @property
    def weight(self) -> torch.Tensor:
        return self.embeddings.weight

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(rows, self.weight)


class SoftcappedHead(torch.nn.Module):
    """An output head whose logits are soft-capped, cap·tanh(logits / cap), as Gemma 2 (and a Gemma 3
    config that sets `final_logit_softcapping`) computes them; not a plain linear map, so
    log-probabilities come from its logits, not from the chunked linear-head kernel."""

    def __init__(self, head: torch.nn.Module, cap: float) -> None:
        super().__init__()
        self.head, self.cap = head, cap

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(rows) / self.cap) * self.cap


def token_logprob_inputs(model: Module, batch: Batch) -> tuple[torch.nn.Module | None, torch.Tensor, torch.Tensor]:
    """Final hidden states at the positions that carry loss, and the tokens they predict.

    Only those rows go through the output projection: on chat data most positions are prompt,
    and the vocabulary projection is the largest matmul of a small model.
    """
    base = unwrap(model)
    head = base.get_output_embeddings()
    if head is not None and is_sharded(head.weight):  # FSDP, the head tied to the sharded embeddings
        head = TiedHead(base.get_input_embeddings())
    if batch.get("segment_prefixes") is not None and not takes_segments(model):
        raise ValueError(
            "a batch of replies packed after their shared prompt needs segment attention, which this model does not run"
        )
    labels = batch["labels"]
    targets_mask = predicted(labels)
    # no KV cache in training; packed batches carry position_ids and no attention mask
    inputs: dict[str, Any] = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": batch.get("position_ids"),
        "use_cache": False,
    }
    if head is None or is_prompt_learning(model):
        # no separable head, or virtual tokens that only the PEFT forward adds: full logits
        logits = model(**inputs).logits[:, -labels.shape[1] :]  # prompt tuning's virtual positions come first
        return None, logits[:, :-1][targets_mask], labels[:, 1:][targets_mask]
    if batch.get("segments") is not None and uses_segments(base):
        inputs["segments"] = batch["segments"]
        if batch.get("segment_prefixes") is not None:
            inputs["segment_prefixes"] = batch["segment_prefixes"]
    hidden = base.get_decoder()(**inputs).last_hidden_state
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap is not None:
        head = SoftcappedHead(head, cap)
    return head, hidden[:, :-1][targets_mask], labels[:, 1:][targets_mask]


def takes_segments(model: Module) -> bool:
    """Whether a batch's segments reach this model's attention (`token_logprob_inputs` passes them
    to the decoder under segment attention; prompt learning runs the whole PEFT model, without)."""
    base = unwrap(model)
    return base.get_output_embeddings() is not None and not is_prompt_learning(model) and uses_segments(base)


def token_logprobs(model: Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every labelled token (flat, in row-major order) and the sequence each
    token belongs to (`sequence_of_token`). Logits exist only at labelled positions."""
    head, rows, targets = token_logprob_inputs(model, batch)
    return head_token_logprobs(head, rows, targets)[0], sequence_of_token(batch)


def predicted(labels: torch.Tensor) -> torch.Tensor:
    """[rows, length - 1]: whether each position's next token carries loss (is labelled)."""
    return labels[:, 1:] != IGNORE


def row_of_token(batch: Batch) -> torch.Tensor:
    """The row each labelled token of `batch` belongs to, in `token_logprobs`' order."""
    return predicted(batch["labels"]).nonzero()[:, 0]


def sequence_of_token(batch: Batch) -> torch.Tensor:
    """The sequence each labelled token of `batch` belongs to: its row's, or where rows hold
    several sequences after the prompt they share, the batch's `reply_of_token`."""
    return batch["reply_of_token"] if "reply_of_token" in batch else row_of_token(batch)


def sequences_in(batch: Batch) -> int:
    """How many sequences `sequence_of_token` numbers: the rows, or `n_replies`."""
    return batch["n_replies"] if "n_replies" in batch else batch["labels"].shape[0]


def head_token_logprobs(
    head: torch.nn.Module | None, rows: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each target, whether it is the argmax) from `token_logprob_inputs`'
    rows: through a bias-free head in chunks (`head_logprobs`), else from the logits given."""
    if head is not None and getattr(head, "bias", None) is None and isinstance(head, (torch.nn.Linear, TiedHead)):
        return head_logprobs(rows, head.weight, targets)
    logits = (head(rows) if head is not None else rows).float()
    logp = logits.log_softmax(-1)
    return logp.gather(1, targets[:, None])[:, 0], logp.detach().argmax(-1) == targets


def per_row_sum(values: torch.Tensor, row_of_token: torch.Tensor, n_rows: int) -> torch.Tensor:
    return torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, row_of_token, values)


def sequence_logprobs(model: Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each sequence's labelled tokens, their count): what preference
    and policy-gradient losses compare; a sequence is a row, or one of those packed after a
    shared prompt (`sequence_of_token`)."""
    token_logps, of = token_logprobs(model, batch)
    n = sequences_in(batch)
    return per_row_sum(token_logps, of, n), torch.bincount(of, minlength=n)
