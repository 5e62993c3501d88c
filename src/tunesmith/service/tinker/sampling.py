"""`asample` on the batched generation engine: a prompt's tokens in, `num_samples` sequences out,
each with its tokens' log-probabilities, as the Tinker API's SampleResponse.

Every sampler is a model the service's catalog serves (the base, or a saved sampler's adapter
registered as an `ft:` model), so Tinker samples and OpenAI chat requests share one engine and
its batches. `compute_logprobs` is a sample of one token with `prompt_logprobs`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tunesmith.errors import UserError
from tunesmith.generation.engine import Request
from tunesmith.generation.sampling import RowSettings


@dataclass
class SampleParams:
    num_samples: int = 1
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: str | list | None = None  # None: end of sequence; []: nothing stops; strings or token ids
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0
    topk_sample_logprobs: int = 0


def _stops(stop, eos: int | None) -> tuple[frozenset[int], list[str]]:
    if stop is None:
        return frozenset({eos} if eos is not None else ()), []
    stop = [stop] if isinstance(stop, str) else list(stop)
    if all(isinstance(s, int) for s in stop):
        return frozenset(stop), []
    if all(isinstance(s, str) for s in stop):
        return frozenset(), [s for s in stop if s]
    raise UserError("sampling_params.stop: strings or token ids, not both")


def sample(served, model_id: str | None, prompt: list[int], p: SampleParams, max_tokens_cap: int) -> dict:
    """Sequences ({tokens, logprobs, stop_reason, topk}) and, when asked, the prompt's log-probabilities."""
    if not prompt:
        raise UserError("prompt: no tokens")
    vocab = served.model.config.vocab_size
    if min(prompt) < 0 or max(prompt) >= vocab:
        raise UserError(f"prompt: token ids must be in 0..{vocab - 1}")
    if not 1 <= p.num_samples <= 128:
        raise UserError("num_samples: 1 to 128")
    max_tokens = max_tokens_cap if p.max_tokens is None else p.max_tokens
    if not 0 <= max_tokens <= max_tokens_cap:
        raise UserError(f"sampling_params.max_tokens: 0 to this server's limit of {max_tokens_cap}")
    tokenizer = served.tokenizer(model_id or served.base_id)
    stop_ids, stop_texts = _stops(p.stop, tokenizer.eos_token_id)
    seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little") >> 2
    k = max(p.topk_sample_logprobs, 0)
    want_prompt = p.prompt_logprobs or p.topk_prompt_logprobs > 0
    streams = []
    for i in range(p.num_samples):
        settings = RowSettings(
            p.temperature, p.top_p, max(p.top_k, 0), seed=seed + i, logprobs=max(k, p.topk_prompt_logprobs)
        )
        streams.append(
            served.engine.submit(
                Request(prompt, max_tokens, model_id, settings, stop_ids, prompt_logprobs=want_prompt and i == 0)
            )
        )
    sequences = [_collect(stream, tokenizer, stop_texts, max_tokens, k) for stream in streams]
    out: dict = {"sequences": sequences}
    if want_prompt:
        entries = streams[0].prompt_logprobs or []  # one per prompt token, None for the first
        out["prompt_logprobs"] = [e.logprob if e is not None else None for e in entries]
        if p.topk_prompt_logprobs > 0:
            rows = [list(e.top or [])[: p.topk_prompt_logprobs] if e is not None else [] for e in entries]
            out["topk_prompt"] = (rows, p.topk_prompt_logprobs)
    return out


def _collect(stream, tokenizer, stop_texts: list[str], max_tokens: int, k: int) -> dict:
    tokens, logprobs, top = [], [], []
    reason = None
    try:
        for choice in stream:
            tokens.append(choice.token)
            logprobs.append(choice.logprob)
            top.append(list(choice.top or [])[:k])
            if stop_texts and any(s in tokenizer.decode(tokens[-32:]) for s in stop_texts):
                reason = "stop"  # the sequence ends with the token that completed the stop string
                break
    finally:
        stream.cancel()
    if reason is None:
        reason = "length" if len(tokens) >= max_tokens and not _ended_on_stop(stream) else "stop"
    return {"tokens": tokens, "logprobs": logprobs, "stop_reason": reason, "topk": (top, k) if k else None}


def _ended_on_stop(stream) -> bool:
    done = getattr(stream, "done", None)
    return done is not None and done.reason == "stop"
