"""Offline preference optimisation: DPO and its family on pairs, KTO on single judged responses.

Features are the chosen and rejected conversations (loss on the last assistant turn, the
response being judged). The reference model is the starting model: with an adapter, the same
model with the adapter switched off (no second copy); for full fine-tuning, its log-probabilities
are computed once before training (`prepare`) and kept with the features, cached in the run
directory for a resumed run. KTO needs the reference on mismatched prompt/response pairs that
only exist per batch, so a full fine-tune keeps a frozen copy for it.

A pair's two responses repeat its prompt. Where segment attention reaches the model, the pairs
train packed one row each, the prompt once and each response after it (`data/shared_prefix.py`):
the same log-probabilities as a row per response, from fewer tokens through every pass.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

import torch

from tunesmith import atomic
from tunesmith.data.chat import IGNORE, encode_chat
from tunesmith.data.collate import collate_tokens
from tunesmith.data.shared_prefix import shareable, shared_prefix_row, trained_tokens
from tunesmith.engine.distributed import is_main
from tunesmith.engine.method import Method, Setup
from tunesmith.engine.step import to_device
from tunesmith.errors import UserError
from tunesmith.methods.logprobs import sequence_logprobs, takes_segments
from tunesmith.methods.preference_losses import LENGTH_NORMALISED, REFERENCE_FREE, kto_loss, paired_loss
from tunesmith.methods.reference import ReferenceModel

if TYPE_CHECKING:
    from torch.nn import Module
    from transformers import PreTrainedTokenizerBase

    from tunesmith.config.schema import RunConfig
    from tunesmith.data.batch import Batch
    from tunesmith.data.layouts import Example

DEFAULT_BETA = {"simpo": 2.0}
REFERENCE_CACHE = "reference_logps.json"


class PreferenceOptimisation(Method):
    """What the preference methods share (`preference.*`): responses encoded with the loss on the
    judged reply, and a frozen reference where the loss has one. `dpo` builds the class for
    `preference.loss`: `PairedPreference` (the DPO family, on chosen/rejected pairs) or `KTO`
    (single judged responses)."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        p = config.preference
        self.kind = p.loss
        self.beta = p.beta if p.beta is not None else DEFAULT_BETA.get(p.loss, 0.1)
        self.max_length = config.data.max_length
        self.train_reasoning = config.data.train_on_reasoning
        self.reference: ReferenceModel | None = None  # adapter switched off, or a frozen copy (KTO, full)

    @classmethod
    def variant(cls, config: RunConfig) -> type[Method]:
        return KTO if config.preference.loss == "kto" else PairedPreference

    def _response(
        self,
        tokenizer: PreTrainedTokenizerBase,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any] | None:
        enc = encode_chat(tokenizer, messages, self.max_length, "last", tools, self.train_reasoning)
        self.truncated += enc.truncated
        if all(label == IGNORE for label in enc.labels[1:]):
            self.dropped += 1
            return None  # truncation cut the whole response
        return {"input_ids": enc.input_ids, "labels": enc.labels}


class PairedPreference(PreferenceOptimisation):
    """The DPO family on chosen/rejected pairs: sigmoid (DPO), IPO, hinge, SimPO, ORPO, each
    optionally with RPO's NLL term on the chosen reply (`preference.nll_weight`)."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        p = config.preference
        self.label_smoothing, self.gamma, self.nll_weight = p.label_smoothing, p.simpo_gamma, p.nll_weight

    @property
    def needs_reference(self) -> bool:
        return self.kind not in REFERENCE_FREE

    # --- examples -> features -------------------------------------------------------------
    def features(self, example: Example, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any] | None:
        if example.rejected is None:
            raise UserError(
                f"{example.source}: preference loss '{self.kind}' needs pairs "
                "({prompt, chosen, rejected}); single judged responses train with preference.loss: kto"
            )
        assert example.messages is not None  # a pair has a conversation on each side
        chosen = self._response(tokenizer, example.messages, example.tools)
        rejected = self._response(tokenizer, example.rejected, example.tools)
        if chosen is None or rejected is None:
            return None
        return {"chosen": chosen, "rejected": rejected, "length": len(chosen["input_ids"]) + len(rejected["input_ids"])}

    # --- features -> batch ------------------------------------------------------------------
    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        rows = [f["chosen"] for f in features] + [f["rejected"] for f in features]
        batch: Batch = collate_tokens(rows, tokenizer.pad_token_id)
        batch["n_items"] = len(features)  # pairs
        shared = shared_pairs(features, tokenizer.pad_token_id)
        if shared is not None:
            batch["shared_prompts"] = shared
        if all("reference" in f for f in features):
            batch["reference"] = torch.tensor(
                [f["reference"][0] for f in features] + [f["reference"][1] for f in features]
            )
        return batch

    # --- batch -> loss ----------------------------------------------------------------------
    def _reference_logps(self, model: Module, batch: Batch) -> torch.Tensor:
        if "reference" in batch:
            return batch["reference"].to(batch["input_ids"].device)
        if self.reference is None:
            raise RuntimeError("the run did not set up a reference model")
        rows = as_computed(batch, self.reference.takes_segments(model))
        return self.reference.sequence_logprobs(model, rows)[0]

    def loss(self, model: Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        sums, counts = sequence_logprobs(model, as_computed(batch, takes_segments(model)))
        logps = sums
        n = batch["n_items"]
        ref = self._reference_logps(model, batch) if self.needs_reference else None
        if self.kind in LENGTH_NORMALISED:
            scale = counts.clamp(min=1).to(logps.dtype)
            logps = logps / scale
            ref = ref / scale if ref is not None else None
        losses, chosen_rewards, rejected_rewards = paired_loss(
            self.kind,
            logps[:n],
            logps[n:],
            None if ref is None else ref[:n],
            None if ref is None else ref[n:],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            gamma=self.gamma,
        )
        chosen_nll = -sums[:n] / counts[:n].clamp(min=1)  # per token
        if self.kind == "orpo":  # λ·odds-ratio term plus the chosen response's NLL per token
            losses = chosen_nll + self.beta * losses
        elif self.nll_weight:  # RPO: keep the chosen reply likely while pushing the rejected one down
            losses = losses + self.nll_weight * chosen_nll
        margins = chosen_rewards - rejected_rewards
        metrics = {
            "accuracy": float((margins > 0).sum()),
            "rewards_chosen": float(chosen_rewards.sum()),
            "rewards_rejected": float(rejected_rewards.sum()),
            "margin": float(margins.sum()),
        }
        return losses.sum(), metrics

    # --- set-up the run does once -----------------------------------------------------------
    def prepare(self, setup: Setup) -> None:
        """The reference for `features` (training and validation): the adapter switched off; for a
        full fine-tune, log-probs computed now and cached in the run directory for a resume."""
        if not self.needs_reference:
            return
        model, features, cfg = setup.model, setup.features, setup.cfg
        if hasattr(model, "disable_adapter"):
            self.reference = ReferenceModel(model)
            return
        cached = setup.run_dir / REFERENCE_CACHE
        values = json.loads(cached.read_text()) if cached.is_file() else None
        if values is None or len(values) != len(features):
            setup.console.print(
                f"reference log-probs: one pass over {len(features)} pairs (full fine-tuning keeps no second model)"
            )
            values = precompute(model, self, setup.tokenizer, features, cfg.train.batch_size, cfg.train.precision)
            if is_main():  # every rank computes the same values; one writes them
                cached.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_text(cached, json.dumps(values))
        for f, v in zip(features, values):
            f["reference"] = v


class KTO(PreferenceOptimisation):
    """KTO on judged single responses (a pair gives one desirable and one undesirable), each
    weighed against a reference point estimated on mismatched prompt/response pairs."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        p = config.preference
        self.desirable_weight, self.undesirable_weight = p.desirable_weight, p.undesirable_weight

    # --- examples -> features -------------------------------------------------------------
    def features(self, example: Example, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any] | None:
        """A pair gives one desirable and one undesirable response; a judged response gives one."""
        assert example.messages is not None  # a judged response is a conversation
        if example.rejected is not None:
            judged = [(example.messages, True), (example.rejected, False)]
        elif example.desirable is not None:
            judged = [(example.messages, example.desirable)]
        else:
            raise UserError(
                f"{example.source}: preference.loss kto needs pairs or responses with a boolean 'label' "
                "(true: desirable)"
            )
        responses = []
        for messages, desirable in judged:
            r = self._response(tokenizer, messages, example.tools)
            if r is not None:
                first = next(i for i, label in enumerate(r["labels"]) if label != IGNORE)
                responses.append(
                    {"prompt": r["input_ids"][:first], "completion": r["input_ids"][first:], "desirable": desirable}
                )
        if not responses:
            return None
        return {"responses": responses, "length": sum(len(r["prompt"]) + len(r["completion"]) for r in responses)}

    # --- features -> batch ------------------------------------------------------------------
    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        """Each response with its own prompt, then each prompt with the next response (mismatched
        pairs, the reference point's KL estimate)."""
        responses = [r for f in features for r in f["responses"]]
        n = len(responses)
        rows = []
        for i in range(2 * n):
            prompt = responses[i % n]["prompt"]
            completion = responses[i % n if i < n else (i + 1) % n]["completion"]
            ids = (prompt + completion)[: self.max_length]
            rows.append({"input_ids": ids, "labels": ([IGNORE] * len(prompt) + completion)[: self.max_length]})
        batch: Batch = collate_tokens(rows, tokenizer.pad_token_id)
        batch["desirable"] = torch.tensor([r["desirable"] for r in responses])
        batch["n_items"] = n
        mask = batch["attention_mask"]
        assert mask is not None  # responses are padded, not packed
        batch["n_tokens"] = int(mask[:n].sum())
        return batch

    # --- batch -> loss ----------------------------------------------------------------------
    def loss(self, model: Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.reference is None:
            raise RuntimeError("the run did not set up a reference model")
        n = batch["n_items"]
        matched = _rows(batch, slice(0, n))
        mismatched = _rows(batch, slice(n, 2 * n))
        logps, _ = sequence_logprobs(model, matched)
        with torch.no_grad():
            kl_logps, _ = sequence_logprobs(model, mismatched)
            ref = self.reference.sequence_logprobs(model, matched)[0]
            ref_kl = self.reference.sequence_logprobs(model, mismatched)[0]
        desirable = batch["desirable"].to(logps.device)
        kl = (kl_logps - ref_kl).mean()
        losses, rewards = kto_loss(
            logps,
            ref,
            desirable,
            kl,
            beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
        )
        # accuracy: a desirable response's reward above the reference point, an undesirable one's below
        correct = torch.where(desirable, rewards > self.beta * kl.clamp(min=0), rewards < self.beta * kl.clamp(min=0))
        # the engine divides metric sums by the batch's responses: means of each kind are scaled to suit
        metrics = {
            "accuracy": float(correct.sum()),
            "kl": float(kl) * n,
            "rewards_desirable": float(rewards[desirable].mean()) * n if desirable.any() else 0.0,
            "rewards_undesirable": float(rewards[~desirable].mean()) * n if (~desirable).any() else 0.0,
        }
        return losses.sum(), metrics

    # --- set-up the run does once -----------------------------------------------------------
    def prepare(self, setup: Setup) -> None:
        """The reference: the adapter switched off, or for a full fine-tune a frozen copy (the
        mismatched pairs it scores exist only per batch, so nothing can be computed ahead)."""
        self.reference = ReferenceModel(setup.model)


def shared_pairs(features: list[dict[str, Any]], pad: int) -> Batch | None:
    """The pairs as rows of their own, the prompt once and the chosen then the rejected response
    after it; the chosen responses are the batch's first sequences, the rejected the next (as in
    the row-per-response batch). None where a pair's responses share no untrained token."""
    rows, chosen, rejected = [], [], []
    for f in features:
        pair = [(f[side]["input_ids"], f[side]["labels"]) for side in ("chosen", "rejected")]
        shared = shareable(pair)
        if shared < 1:
            return None
        rows.append(shared_prefix_row(pair, shared))
        chosen.append(trained_tokens(pair[0][1]))
        rejected.append(trained_tokens(pair[1][1]))
    n = len(features)
    batch = collate_tokens(rows, pad)
    order = [s for i in range(n) for s in (i, n + i)]  # row-major: each pair's chosen, then its rejected
    counts = [c for pair in zip(chosen, rejected) for c in pair]
    batch["reply_of_token"] = torch.repeat_interleave(torch.tensor(order), torch.tensor(counts, dtype=torch.long))
    batch["n_replies"] = 2 * n
    return batch


def as_computed(batch: Batch, takes_segments: bool) -> Batch:
    """The rows a model computes a batch of pairs as: each pair in one row after its prompt where
    segments reach its attention (`logprobs.takes_segments`), else a row per response."""
    shared = batch.get("shared_prompts")
    if shared is None or not takes_segments:
        return batch
    return to_device(shared, batch["input_ids"].device)


def _rows(batch: Batch, rows: slice) -> Batch:
    per_row = ("input_ids", "labels", "attention_mask", "position_ids", "segments")
    fields: dict[str, Any] = dict(batch)
    return cast("Batch", {k: (v[rows] if k in per_row and v is not None else v) for k, v in fields.items()})


def precompute(
    model: Module,
    method: PairedPreference,
    tokenizer: PreTrainedTokenizerBase,
    features: list[dict[str, Any]],
    batch_size: int,
    precision: str,
) -> list[list[float]]:
    """[chosen, rejected] reference log-probs of every pair: the model as it is now, no gradients,
    in the training precision (so that policy and reference agree exactly before the first step)."""
    from tunesmith.runtime.precision import autocast, device, resolve_precision

    was_training = model.training
    model.eval()
    dev = device()
    model.to(dev)  # where training will run (a quantized base is never fully fine-tuned)
    out: list[list[float]] = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            chunk = features[start : start + batch_size]
            batch = method.collate([{k: v for k, v in f.items() if k != "reference"} for f in chunk], tokenizer)
            batch = to_device(batch, dev)
            with autocast(resolve_precision(precision, dev), dev):
                logps, _ = sequence_logprobs(model, as_computed(batch, takes_segments(model)))
            n = len(chunk)
            out += [[float(c), float(r)] for c, r in zip(logps[:n], logps[n:])]
    model.train(was_training)
    return out
