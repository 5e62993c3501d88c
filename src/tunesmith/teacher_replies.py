"""Sequence-level distillation data: a teacher answers prompts, the answers become SFT data
(`tunesmith distill generate`).

The teacher is a local model (any model reference: greedy, batched) or an OpenAI-compatible
endpoint (`--teacher https://host/v1 --teacher-model NAME`, API key from an environment
variable): a frontier model, or another `tunesmith serve`. Requests are retried with exponential
backoff on rate limits, server errors and dropped connections, and paced to `--rpm` requests a
minute. Each answer is appended as one line ({"prompt", "completion", "teacher"}) and fsync'd as
it arrives, so an interrupted run loses nothing and a restart answers only the prompts the
output file does not have yet.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.data.prompts import append_durably, prompt_field, prompt_key, prompt_of, prompts_in

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class EndpointTeacher:
    """Chat completions from an OpenAI-compatible server."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, *, max_tokens: int = 512,
                 temperature: float = 0.0, retries: int = 6, backoff: float = 1.0, rpm: float | None = None,
                 timeout: float = 120.0):
        if not model:
            raise UserError("--teacher-model: an endpoint needs the model name to ask for")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.interval = 60.0 / rpm if rpm else 0.0
        self.last_request = 0.0
        self.key = None
        if api_key_env:
            self.key = os.environ.get(api_key_env)
            if not self.key:
                raise UserError(f"--api-key-env {api_key_env}: that environment variable is not set")
        self.name = f"{model} at {base_url}"

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def answer(self, messages: list[dict]) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": self.temperature}
        for attempt in range(self.retries + 1):
            wait = self.last_request + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.last_request = time.monotonic()
            try:
                reply = self._post(body)
                return reply["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as e:
                if e.code not in RETRY_STATUS or attempt == self.retries:
                    detail = e.read().decode("utf-8", "replace")[:200]
                    raise UserError(f"{self.url}: HTTP {e.code} {detail}") from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
                delay = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if attempt == self.retries:
                    raise UserError(f"{self.url}: {getattr(e, 'reason', e)} (after {attempt + 1} attempts)") from None
                delay = None
            except (KeyError, IndexError, TypeError, ValueError):
                raise UserError(f"{self.url}: the reply is not an OpenAI chat completion") from None
            time.sleep(delay if delay is not None else self.backoff * 2**attempt)
        raise AssertionError("unreachable")


class LocalTeacher:
    """Greedy replies of a local model, batched."""

    def __init__(self, reference: str, max_tokens: int = 512, batch_size: int = 16):
        from tunesmith.eval.generate import Sampling
        from tunesmith.model.load import load_for_inference
        from tunesmith.runtime.precision import inference_dtype

        self.model, self.tokenizer = load_for_inference(reference, dtype=inference_dtype("auto"))
        self.sampling = Sampling(max_new_tokens=max_tokens)
        self.batch_size = batch_size
        self.name = reference

    def answer_many(self, conversations: list[list[dict]]) -> list[str]:
        from tunesmith.eval.generate import generate_batch

        return generate_batch(self.model, self.tokenizer, conversations, self.sampling)


def generate_replies(teacher, prompts_path: str | Path, out: Path, limit: int | None = None, progress=None) -> dict:
    """Answer every prompt not yet answered in `out`; returns counts."""
    from tunesmith.data.records import load_examples

    out = Path(out)
    prompts = [prompt_of(e) for e in load_examples(str(prompts_path))][:limit]
    done = prompts_in(out, "tunesmith distill generate")
    todo = [p for p in prompts if prompt_key(prompt_field(p)) not in done]
    skipped = len(prompts) - len(todo)
    step, empty = getattr(teacher, "batch_size", 1), 0
    for start in range(0, len(todo), step):
        chunk = todo[start : start + step]
        replies = teacher.answer_many(chunk) if hasattr(teacher, "answer_many") else [teacher.answer(chunk[0])]
        kept = [(p, r) for p, r in zip(chunk, replies) if r.strip()]
        empty += len(chunk) - len(kept)  # nothing to learn from; a restart asks again
        if kept:
            append_durably(out, [{"prompt": prompt_field(p), "completion": r, "teacher": teacher.name} for p, r in kept])
        if progress is not None:
            progress(len(chunk))
    return {"prompts": len(prompts), "answered": len(todo) - empty, "empty_replies": empty,
            "already_answered": skipped, "out": str(out)}
