"""An OpenAI-compatible endpoint as a model: a frontier model, or another `tunesmith serve`.

Used wherever an endpoint stands in for a local model: a teacher's replies (`distill generate`),
a grader's judge (`score_model`), a baseline scored on the test split (`eval.baselines`), a
teacher scoring a student's tokens (on-policy distillation)."""

from __future__ import annotations

import os
import time

from tunesmith.errors import UserError


class Endpoint:
    """Requests to an OpenAI-compatible server through `openai`'s client (its retries with
    exponential backoff on rate limits, server errors, timeouts and dropped connections, honouring
    Retry-After), paced to `rpm`."""

    def __init__(
        self,
        base_url: str,
        model: str | None,
        api_key_env: str | None = None,
        *,
        retries: int = 2,  # openai's default: a wrong URL fails in seconds; distill generate asks for more
        rpm: float | None = None,
        timeout: float = 120.0,
        options: tuple[str, str] = ("model", "api_key_env"),
    ):
        """`options`: what the caller calls the model and key settings, for the errors (CLI flags, config keys)."""
        import openai

        if not model:
            raise UserError(f"{options[0]}: an endpoint ({base_url}) needs the name of the model to ask for")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.retries = retries
        self.interval = 60.0 / rpm if rpm else 0.0
        self.last_request = 0.0
        key = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UserError(f"{options[1]} {api_key_env}: that environment variable is not set")
        # (a server without keys takes any; the client insists on one)
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key or "none", max_retries=retries, timeout=timeout)
        self.name = f"{model} at {base_url}"

    def request(self, path: str, call, parse, kind: str):
        """`parse(reply)` of the answer to `call(client.with_raw_response)` (the POST to `path`), and
        the answered attempt's wall time (no pacing, no retries); a reply `parse` cannot read is an
        error naming `kind`."""
        import openai

        url = self.base_url + path
        wait = self.last_request + self.interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.last_request = time.monotonic()
        try:
            raw = call(self.client.with_raw_response)
        except openai.APIStatusError as e:
            raise UserError(f"{url}: HTTP {e.status_code} {e.response.text[:200]}") from None
        except openai.APIConnectionError as e:  # refused, dropped, timed out
            reason = e.__cause__ or e
            raise UserError(f"{url}: {reason} (after {self.retries + 1} attempts)") from None
        try:
            return parse(raw.http_response.json()), raw.elapsed.total_seconds()
        except (KeyError, IndexError, TypeError, ValueError):
            raise UserError(f"{url}: the reply is not an OpenAI {kind}") from None


class ChatEndpoint(Endpoint):
    """Chat completions: the endpoint as a model that answers conversations."""

    def __init__(
        self,
        base_url: str,
        model: str | None,
        api_key_env: str | None = None,
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        **options,
    ):
        super().__init__(base_url, model, api_key_env, **options)
        self.url = self.base_url + "/chat/completions"  # what the replies cache keys on
        self.max_tokens, self.temperature = max_tokens, temperature

    def answer(self, messages: list[dict], **overrides) -> str:
        """The reply's text; `overrides` set other request fields (max_tokens, temperature, ...)."""
        return self.complete(messages, **overrides)["message"].get("content") or ""

    def complete(self, messages: list[dict], **overrides) -> dict:
        """{"message": the assistant message (content, tool_calls), "usage": the server's token counts
        ({} if it gives none), "seconds": the answered request's wall time (no pacing, no retries)}."""
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            **overrides,
        }

        def parse(reply: dict) -> dict:
            message = reply["choices"][0]["message"]
            if not isinstance(message, dict):
                raise TypeError
            return {"message": message, "usage": reply.get("usage") or {}}

        answer, seconds = self.request(
            "/chat/completions", lambda c: c.chat.completions.create(**body), parse, "chat completion"
        )
        return {**answer, "seconds": seconds}


class ScoringEndpoint(Endpoint):
    """Legacy completions as a scorer: the log-probability of every token of given token-id
    sequences under the endpoint's model (`echo` + `logprobs`, `max_tokens` 0; what vLLM,
    `tunesmith serve` and OpenAI's legacy API answer). Ids, not text: a re-encoded text can
    tokenize differently from the tokens a student wrote."""

    def score(self, sequences: list[list[int]]) -> tuple[list[list[float | None]], dict]:
        """Each sequence's per-token log-probabilities (the first token's is None: nothing
        precedes it), and the server's usage."""
        body = {
            "model": self.model,
            "prompt": sequences,
            "max_tokens": 0,
            "echo": True,
            "logprobs": 0,
            "temperature": 0.0,
        }

        def parse(reply: dict):
            choices = sorted(reply["choices"], key=lambda c: c.get("index", 0))
            scores = [list(c["logprobs"]["token_logprobs"]) for c in choices]
            if len(scores) != len(sequences) or any(len(s) != len(q) for s, q in zip(scores, sequences)):
                raise ValueError("one score per token of each sequence")
            if any(not isinstance(v, (int, float)) for s in scores for v in s[1:]):
                raise TypeError
            return scores, reply.get("usage") or {}

        kind = "completion with echoed log-probabilities"
        return self.request("/completions", lambda c: c.completions.create(**body), parse, kind)[0]
