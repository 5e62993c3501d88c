"""A model behind an OpenAI-compatible endpoint (a frontier model, a hosted fine-tune, another
`tunesmith serve`) scored on a test split exactly as a local model is: the same prompts (zero- or
k-shot), the same metrics and intervals, plus what each request costs there: tokens as the
server counts them, price per 1,000 requests, latency.

Replies are cached on disk (ReplyCache), keyed by everything that decides them (URL, model,
messages, tools, max_tokens, temperature): scoring again, or the same baseline in another run,
sends nothing and costs nothing. A cached reply keeps the latency it was measured with.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from tunesmith.data.layouts import Example
from tunesmith.data.tool_format import turn_text
from tunesmith.eval.endpoint import ChatEndpoint
from tunesmith.eval.task import score_replies, task_prompts


class ReplyCache:
    """Endpoint replies by request, in one SQLite file (safe for several processes)."""

    @classmethod
    def shared(cls) -> ReplyCache:
        """The one cache every command uses: $TUNESMITH_HOME (or ~/.cache/tunesmith)/endpoint-replies.sqlite."""
        from tunesmith.model.resolve import home

        return cls(home() / "endpoint-replies.sqlite")

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30)
        self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        self.db.commit()

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, reply: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, json.dumps(reply)))
        self.db.commit()


def cost_per_1000(
    prompt_tokens: float | None, completion_tokens: float | None, price_in: float | None, price_out: float | None
) -> float | None:
    """Dollars per 1,000 requests of these mean token counts at these prices per million tokens."""
    if price_in is None or price_out is None or prompt_tokens is None or completion_tokens is None:
        return None
    return 1000 * (prompt_tokens * price_in + completion_tokens * price_out) / 1e6


def evaluate_endpoint(
    endpoint: ChatEndpoint,
    examples: list[Example],
    *,
    label: str,
    cache: ReplyCache,
    shots: Sequence[Example] = (),
    system: str | None = None,
    max_new_tokens: int = 64,
    metric: str | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
    predictions_path: Path | None = None,
    progress=None,
) -> dict:
    """Ask the endpoint every test prompt (cached), score the replies; evaluate_task's result plus
    the endpoint's token counts, cost and latency."""
    task = task_prompts(examples, shots, system)
    replies, usage, seconds, sent = [], [], [], 0
    t0 = time.perf_counter()
    for messages, tools in zip(task.prompts, task.tools):
        request = {
            "url": endpoint.url,
            "model": endpoint.model,
            "messages": messages,
            "tools": tools,
            "max_tokens": max_new_tokens,
            "temperature": endpoint.temperature,
        }
        key = ReplyCache.key(request)
        got = cache.get(key)
        if got is None:
            got = endpoint.complete(messages, max_tokens=max_new_tokens, **({"tools": tools} if tools else {}))
            cache.put(key, got)
            sent += 1
        replies.append(
            turn_text(
                {"content": got["message"].get("content") or "", "tool_calls": got["message"].get("tool_calls") or []}
            )
        )
        usage.append(got.get("usage") or {})
        seconds.append(got["seconds"])
        if progress is not None:
            progress()
    counted = [u for u in usage if "prompt_tokens" in u and "completion_tokens" in u]
    prompt_tokens = sum(u["prompt_tokens"] for u in counted) / len(counted) if counted else None
    completion_tokens = sum(u["completion_tokens"] for u in counted) / len(counted) if counted else None
    extra = [
        {"prompt_tokens": u.get("prompt_tokens"), "completion_tokens": u.get("completion_tokens"), "seconds": s}
        for u, s in zip(usage, seconds)
    ]
    return {
        "label": label,
        "kind": "endpoint",
        "model": endpoint.model,
        "url": endpoint.url.removesuffix("/chat/completions"),
        "shots": len(shots),
        "n": len(examples),
        "scores": score_replies(task, replies, metric, predictions_path, extra),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "price_per_1m_input": price_in,
        "price_per_1m_output": price_out,
        "cost_per_1000": cost_per_1000(prompt_tokens, completion_tokens, price_in, price_out),
        "latency_s": sum(seconds) / len(seconds),
        "latency_requests": len(seconds),
        "requests_sent": sent,
        "seconds": round(time.perf_counter() - t0, 2),
        "predictions": predictions_path.name if predictions_path is not None else None,
    }
