"""A loss the client's own training loop names (the Tinker API's `forward_backward`), as a method.

The client sends datums: the tokens the model reads, and per position the token(s) it should
predict with what the loss needs (`weights`, sampling `logprobs`, `advantages`). This method
turns them into the engine's batch and returns the summed loss of `methods/token_losses.py`;
`n_items` is 1, so the engine takes the gradient of the sum as the client asked. The target
log-probabilities it computed, one array per datum, wait in `outputs` for the reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tunesmith.data.chat import IGNORE
from tunesmith.data.collate import collate_tokens
from tunesmith.engine.method import Method
from tunesmith.errors import UserError
from tunesmith.methods.logprobs import head_token_logprobs, token_logprob_inputs
from tunesmith.methods.token_losses import check_loss

if TYPE_CHECKING:
    from torch.nn import Module
    from transformers import PreTrainedTokenizerBase

    from tunesmith.data.batch import Batch


@dataclass
class Datum:
    """One sequence: `tokens` the model reads; `inputs` per position (target_tokens of shape (N,)
    or (N, K), weights, logprobs, advantages, ...), N = len(tokens)."""

    tokens: list[int]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)


class ClientLoss(Method):
    """One `forward_backward` request: its loss by name and config, applied to its datums."""

    def __init__(self, loss_fn: str, config: dict[str, Any] | None = None) -> None:
        super().__init__(None)
        self.name = loss_fn
        self.config = dict(config or {})
        self.outputs: list[np.ndarray] = []

    def features(self, datum: Datum, tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, Any]:
        names = set(datum.inputs)
        self.loss_fn = check_loss(self.name, names, self.config)
        n = len(datum.tokens)
        if n == 0:
            raise UserError("a datum's model_input has no tokens")
        targets = datum.inputs["target_tokens"]
        if targets.shape[0] != n:
            raise UserError(f"target_tokens has {targets.shape[0]} positions; model_input has {n} tokens")
        for name, value in datum.inputs.items():
            if value.shape[:1] != (n,) or value.shape[1:] not in (targets.shape[1:], ()):
                raise UserError(
                    f"loss_fn_inputs {name}: shape {list(value.shape)} does not fit {n} positions "
                    f"of target_tokens {list(targets.shape)}"
                )
        first = targets if targets.ndim == 1 else targets[:, 0]
        # position i reads tokens[i] and predicts target i: the engine's labels are shifted by one
        return {
            "input_ids": [*datum.tokens, int(first[-1])],
            "labels": [IGNORE, *(int(t) for t in first)],
            "inputs": datum.inputs,
        }

    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase | None = None) -> Batch:
        pad = getattr(tokenizer, "pad_token_id", None) or 0
        batch = collate_tokens([{k: f[k] for k in ("input_ids", "labels")} for f in features], pad)
        batch["n_items"] = 1  # the gradient of the sum, as the client asked
        batch["lengths"] = [len(f["labels"]) - 1 for f in features]
        names = list(features[0]["inputs"])
        if any(list(f["inputs"]) != names for f in features):
            raise UserError("every datum of one request needs the same loss_fn_inputs")
        # flat over the batch in the order the labelled positions come (row by row)
        batch["inputs"] = {k: torch.from_numpy(np.concatenate([f["inputs"][k] for f in features])) for k in names}
        return batch

    def loss(self, model: Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        head, rows, _ = token_logprob_inputs(model, batch)
        inputs = {k: v.to(rows.device) for k, v in batch["inputs"].items()}
        targets = inputs.pop("target_tokens").long()
        if targets.ndim == 1:
            logps = head_token_logprobs(head, rows, targets)[0]
        else:  # K candidates per position: the whole distribution, then each candidate's entry
            logits = (head(rows) if head is not None else rows).float()
            logps = logits.log_softmax(-1).gather(1, targets)
        inputs = {k: v.to(logps.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        total = self.loss_fn(logps, inputs, self.config)
        flat = logps.detach().float().cpu().numpy()
        self.outputs = list(np.split(flat, np.cumsum(batch["lengths"])[:-1]))
        return total, {}
