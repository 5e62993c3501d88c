"""Who scores the student's tokens in distillation: a model loaded here, or one behind an endpoint.

A loaded teacher gives its whole next-token distribution at every position (any divergence,
logit-level). An endpoint gives only the log-probability of the tokens it is shown (the
completions API's `echo` + `logprobs`), which is what on-policy distillation's sampled-token
estimator needs: each token the student sampled, scored by the teacher. The endpoint's answers
are cached in the run folder (one line per scored sequence, fsync'd), so a resumed run, which
samples the same tokens, pays for none of them twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tunesmith import atomic
from tunesmith.methods.rollout import trained_sequences

if TYPE_CHECKING:
    from torch.nn import Module

    from tunesmith.config.schema import DistillConfig
    from tunesmith.data.batch import Batch


def is_endpoint(reference: str) -> bool:
    return reference.startswith(("http://", "https://"))


class LoadedTeacher:
    """A teacher whose weights are here: its final hidden states and head at the trained positions."""

    whole_distribution = True

    def __init__(self, model: Module, reference: str) -> None:
        self.model, self.name = model, reference

    def rows(self, batch: Batch) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
        """(head, hidden rows) at the batch's trained positions, without gradients."""
        from tunesmith.methods.logprobs import token_logprob_inputs

        dev = batch["input_ids"].device
        if next(self.model.parameters()).device != dev:
            self.model.to(dev)
        with torch.no_grad():
            head, rows, _ = token_logprob_inputs(self.model, batch)
        return (head if head is not None else (lambda r: r)), rows

    def token_logprobs(self, batch: Batch) -> torch.Tensor:
        """The teacher's log-probability of each trained token (flat, rows in order), fp32."""
        from tunesmith.methods.logprobs import head_token_logprobs, token_logprob_inputs

        with torch.no_grad():
            head, rows, targets = token_logprob_inputs(self.model, batch)
            return head_token_logprobs(head, rows, targets)[0].float()


class EndpointTeacher:
    """A teacher behind an OpenAI-compatible completions endpoint (`tunesmith serve`, vLLM, ...):
    the log-probability of each trained token, the sequences sent as token ids."""

    whole_distribution = False

    def __init__(self, url: str, model: str | None, api_key_env: str | None, cache: Path) -> None:
        from tunesmith.eval.endpoint import ScoringEndpoint

        self.endpoint = ScoringEndpoint(
            url, model or "", api_key_env, options=("distill.teacher_model", "distill.api_key_env")
        )
        self.name, self.cache_path = self.endpoint.name, Path(cache)
        if self.cache_path.is_file():  # a kill mid-line leaves a torn last line: cut it, so appends stay whole lines
            text = self.cache_path.read_text()
            if not text.endswith("\n"):
                atomic.write_text(self.cache_path, text[: text.rfind("\n") + 1])
        self.cache = {r["key"]: r["logprobs"] for r in cached_scores(self.cache_path)}

    def _key(self, tokens: list[int]) -> str:
        return hashlib.sha256(json.dumps([self.endpoint.base_url, self.endpoint.model, tokens]).encode()).hexdigest()

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Each sequence's per-token log-probabilities (index i: of token i given those before;
        index 0 is 0.0, never used), from the cache or one request for all that are missing."""
        keys = [self._key(s) for s in sequences]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            scores, _ = self.endpoint.score([sequences[i] for i in missing])
            lines = []
            for i, values in zip(missing, scores):
                if any(v is None for v in values[1:]):
                    raise RuntimeError(f"{self.name}: no log-probability for a token of sequence {i}")
                logprobs = [0.0] + [float(v) for v in values[1:] if v is not None]
                self.cache[keys[i]] = logprobs
                lines.append(json.dumps({"key": keys[i], "logprobs": logprobs}))
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.cache_path, "a") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return [self.cache[k] for k in keys]

    def token_logprobs(self, batch: Batch) -> torch.Tensor:
        """The teacher's log-probability of each trained token (flat, rows in order), fp32."""
        rows = trained_sequences(batch)
        scores = self.sequence_logprobs([tokens for tokens, _ in rows])
        flat = [values[j] for (_, positions), values in zip(rows, scores) for j in positions]
        return torch.tensor(flat, dtype=torch.float32, device=batch["input_ids"].device)


SCORES = "teacher_scores.jsonl"  # an endpoint teacher's answers, in the run folder


def cached_scores(path: Path) -> list[dict[str, Any]]:
    """The cache's records; a line cut short by a kill is left out (its sequence is asked again)."""
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def endpoint_usage(run_dir: Path, distill: DistillConfig) -> dict[str, Any]:
    """What the endpoint teacher scored over the whole run (resumed parts included) and its price."""
    records = cached_scores(Path(run_dir) / SCORES)
    tokens = sum(len(r["logprobs"]) for r in records)
    out: dict[str, Any] = {
        "teacher": f"{distill.teacher_model} at {distill.teacher}",
        "sequences_scored": len(records),
        "tokens_scored": tokens,
    }
    if distill.price_per_1k_tokens is not None:
        out.update(price_per_1k_tokens=distill.price_per_1k_tokens, cost=tokens / 1000 * distill.price_per_1k_tokens)
    return out
