"""Online RL from rewards: GRPO and RLOO, on the one engine.

A batch is a set of prompts. In `rollout`, once per batch before its first loss, the policy samples
`rl.group_size` replies per prompt (batched, KV cache), the rewards score them, and each reply's
advantage says how much better it did than the others in its group:

  grpo  (Shao et al., 2024)  A = (r − mean(group)) / (std(group) + ε); the KL to the reference
        is a loss term, β·KL per token (the k3 estimator exp(q) − q − 1, q = ref − policy)
  rloo  (Ahmadian et al., 2024)  A = r' − mean of the *other* replies' r', with the KL folded
        into the reward: r' = r − β·Σ KL of the reply's tokens

Both optimise the clipped surrogate per reply token, min(ρ·A, clip(ρ, 1 ± ε)·A), with
ρ = π/π_old, averaged over the reply's tokens. With `rl.iterations` μ > 1 the engine steps μ
times on the same sampled replies (`steps_per_batch`), so from the second step on ρ ≠ 1 and the
clip bounds how far one batch moves the policy; with μ = 1 (the default) ρ = 1 at the gradient.
The reference is the starting model: the adapter switched off, or a frozen copy (full tuning).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.data.chat import prompt_ids
from tunesmith.engine.method import Method, Setup
from tunesmith.errors import UserError
from tunesmith.eval.generate import Sampling
from tunesmith.eval.task import split_reference
from tunesmith.methods.group_policy_losses import (
    clipped_surrogate,
    k3_kl,
    leave_one_out_advantages,
    normalised_advantages,
)
from tunesmith.methods.logprobs import per_row_sum, sequence_of_token, takes_segments, token_logprobs
from tunesmith.methods.reference import ReferenceModel
from tunesmith.methods.rollout import sample_replies

if TYPE_CHECKING:
    from torch.nn import Module
    from transformers import PreTrainedTokenizerBase

    from tunesmith.config.schema import RunConfig
    from tunesmith.data.batch import Batch
    from tunesmith.data.layouts import Example
    from tunesmith.methods.rl_rewards import Rewards


class GroupPolicyOptimisation(Method):
    """What GRPO and RLOO share: prompts in, replies sampled and rewarded in `rollout`, the clipped
    surrogate on their tokens in `loss`. A subclass says how rewards become advantages and where
    the KL to the reference goes."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        rl = config.rl
        self.group_size, self.beta, self.clip = rl.group_size, rl.beta, rl.clip
        self.steps_per_batch = rl.iterations
        self.sampling = Sampling(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_p=rl.top_p)
        self.max_length = config.data.max_length
        self.specs = rl.rewards
        self.rewards: Rewards | None = None  # set in prepare (reward models load once)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.reference: ReferenceModel | None = None

    # --- examples -> features -------------------------------------------------------------
    def features(self, example: Example, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any] | None:
        if example.layout == "prompt":
            messages, reference = example.messages, example.reference
        else:
            messages, reference = split_reference(example)
        assert messages is not None  # a prompt is a conversation
        ids = prompt_ids(tokenizer, messages, example.tools)
        if len(ids) + self.sampling.max_new_tokens > self.max_length:
            self.dropped += 1
            return None  # no room left to reply within data.max_length
        return {
            "prompt_ids": ids,
            "messages": messages,
            "reference": reference,
            "length": len(ids),
            "source": example.source,
            "item": example.item,
        }

    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        # replies are sampled in `rollout`; batch["rollout"] keeps them for reuse
        return {
            "prompts": features,
            "n_items": len(features) * self.group_size,
            "n_tokens": 0,
            "input_ids": torch.zeros(0, dtype=torch.long),
            "rollout": {},
        }

    # --- set-up the run does once -----------------------------------------------------------
    def prepare(self, setup: Setup) -> None:
        from tunesmith.methods.rl_rewards import Rewards
        from tunesmith.runtime.precision import inference_dtype

        self.tokenizer, cfg = setup.tokenizer, setup.cfg
        unreferenced = next((f["source"] for f in setup.features if f["reference"] is None), None)
        if unreferenced is not None and any(s.function == "exact_match" for s in self.specs):
            raise UserError(
                f"{unreferenced}: reward exact_match needs a reference answer; this prompt has none "
                "(add 'reference' to prompt records, or use prompt/completion data)"
            )
        self.rewards = Rewards(self.specs, inference_dtype(cfg.train.precision), cfg.rl.sandbox)
        if self.beta > 0:
            self.reference = ReferenceModel(setup.model)

    # --- batch -> loss ----------------------------------------------------------------------
    def _sample(self, model: Module, prompts: list[dict[str, Any]]) -> dict[str, Any]:
        """Replies of the current policy to every prompt, their rewards and advantages, and the
        log-probs the loss compares against (π_old, reference), all without gradients."""
        tok, score = self.tokenizer, self.rewards
        assert tok is not None and score is not None  # set in prepare
        dev = next(p for p in model.parameters()).device
        repeated = [p for p in prompts for _ in range(self.group_size)]
        # each reply through its end (EOS), when it came; a group's replies packed after their one
        # prompt where every pass over them (the policy's, the reference's) can take that
        share = takes_segments(model) and (self.reference is None or self.reference.takes_segments(model))
        batch, new = sample_replies(model, tok, [p["prompt_ids"] for p in repeated], self.sampling, share)
        texts = [str(tok.decode(reply, skip_special_tokens=True)).strip() for reply in new]  # one reply: a str
        rewards, parts = score(
            [p["messages"] for p in repeated],
            texts,
            [p["reference"] for p in repeated],
            [p.get("item") for p in repeated],
        )
        token_rows = sequence_of_token(batch)
        with torch.no_grad():
            ref = self.reference.token_logprobs(model, batch) if self.reference is not None else None
            # π_old: with one step per sample it is the policy at the gradient, taken there
            old = token_logprobs(model, batch)[0] if self._needs_old(ref) else None
        n = len(repeated)
        lengths = torch.bincount(token_rows, minlength=n).clamp(min=1)
        advantages = self.advantages(rewards.to(dev), old, ref, token_rows)
        return {
            "batch": batch,
            "old": old,
            "ref": ref,
            "row_of_token": token_rows,
            "lengths": lengths,
            "rewards": rewards,
            "parts": parts,
            "advantages": advantages,
            "texts": texts,
        }

    def _needs_old(self, ref: torch.Tensor | None) -> bool:
        """Whether the sampling policy's log-probs need a pass of their own: the batch is stepped on
        more than once (ρ ≠ 1 from the second step), or the advantages read them. With one step per
        sample they are the policy's own at the gradient, detached, so ρ = 1 exactly, without a
        second forward pass over every reply (a sixth of a GRPO step on the bundled model)."""
        return self.steps_per_batch > 1 or (ref is not None and not self.kl_in_loss())

    @abstractmethod
    def advantages(
        self, rewards: torch.Tensor, old: torch.Tensor | None, ref: torch.Tensor | None, row_of_token: torch.Tensor
    ) -> torch.Tensor:
        """Each reply's advantage over its group, from its reward (and its tokens' log-probs under
        the sampling policy and the reference, for a KL folded into the reward; `old` is None
        where `_needs_old` says no pass computed it)."""

    def kl_in_loss(self) -> bool:
        """Whether β·KL per token is a loss term (else it is folded into the reward, or off)."""
        return False

    def rollout(self, model: Module, batch: Batch) -> None:
        """The policy's replies to the batch's prompts, scored, once per batch."""
        batch["rollout"].update(self._sample(model, batch["prompts"]))
        batch["n_tokens"] = batch["rollout"]["batch"]["n_tokens"]  # each reply with its prompt

    def loss(self, model: Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        rollout = batch["rollout"]
        rows, row_of_token, n = rollout["batch"], rollout["row_of_token"], rollout["lengths"].shape[0]
        logps, _ = token_logprobs(model, rows)
        old = rollout["old"] if rollout["old"] is not None else logps.detach()
        objective, clipped = clipped_surrogate(logps, old, rollout["advantages"][row_of_token], self.clip)
        per_token = -objective
        kl = None
        if rollout["ref"] is not None:
            kl = k3_kl(logps, rollout["ref"])
            if self.kl_in_loss():
                per_token = per_token + self.beta * kl
        losses = per_row_sum(per_token, row_of_token, n) / rollout["lengths"]  # each reply's token mean
        metrics = {
            "reward": float(rollout["rewards"].sum()),
            "reward_std": float(rollout["rewards"].view(-1, self.group_size).std(1).sum()) * self.group_size,
            "response_length": float(rollout["lengths"].sum()),
            "clip_fraction": float((per_row_sum(clipped.float(), row_of_token, n) / rollout["lengths"]).sum()),
        }
        metrics.update(
            {f"reward_{k}": float(v.sum()) for k, v in rollout["parts"].items()} if len(rollout["parts"]) > 1 else {}
        )
        if kl is not None:
            metrics["kl"] = float((per_row_sum(kl.detach(), row_of_token, n) / rollout["lengths"]).sum())
        return losses.sum(), metrics


class GRPO(GroupPolicyOptimisation):
    """A = (r − mean(group)) / (std(group) + ε); β·KL per token is a loss term."""

    def advantages(
        self, rewards: torch.Tensor, old: torch.Tensor | None, ref: torch.Tensor | None, row_of_token: torch.Tensor
    ) -> torch.Tensor:
        return normalised_advantages(rewards, self.group_size)

    def kl_in_loss(self) -> bool:
        return True


class RLOO(GroupPolicyOptimisation):
    """A = r' − mean of the other replies' r', r' = r − β·Σ KL of the reply's tokens."""

    def advantages(
        self, rewards: torch.Tensor, old: torch.Tensor | None, ref: torch.Tensor | None, row_of_token: torch.Tensor
    ) -> torch.Tensor:
        if ref is not None:
            assert old is not None  # _needs_old: the KL is folded into the reward
            rewards = rewards - self.beta * per_row_sum(k3_kl(old, ref), row_of_token, rewards.shape[0])
        return leave_one_out_advantages(rewards, self.group_size)
