"""A request's replies as OpenAI's response bodies: whole, or streamed as server-sent events.

`answer` submits every choice of every prompt to the generation engine at once (they decode
together), then shapes what comes back: each choice's payload and finish reason, its
log-probabilities where asked, usage; a stream sends chunks as the text comes and the error as
its last event if one comes after the status line went out. Requests count against the server's
queue until their last byte is sent or their client has gone."""

from __future__ import annotations

import json
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from tunesmith.generation.engine import TooLarge
from tunesmith.serve.generation import Finished, Params, Reply
from tunesmith.serve.models import ModelGone, ServedModels
from tunesmith.serve.protocol import ApiError, error_body, gone_body

log = logging.getLogger("tunesmith.serve")


def params(served: ServedModels, req, prompt_len: int, max_tokens: int) -> Params:
    """The request's generation settings, bounded by the model's context and the server's `max_tokens`."""
    room = served.context_length - prompt_len
    wanted = req.limit()
    if wanted is not None and wanted > max_tokens:
        raise ApiError(400, f"max_tokens {wanted} is over this server's limit of {max_tokens}", param="max_tokens")
    limit = wanted if wanted is not None else min(max_tokens, room)
    if limit > room:
        raise ApiError(
            400,
            f"this model's context is {served.context_length} tokens; the prompt has {prompt_len} "
            f"and max_tokens asks for {limit} more",
            param="messages",
            code="context_length_exceeded",
        )
    try:
        logprobs = req.logprobs_wanted()
    except ValueError as e:
        raise ApiError(400, str(e), param="logprobs") from None
    return Params(
        limit,
        req.temperature,
        req.top_p,
        req.stop,
        req.seed,
        logprobs=logprobs,
        echo=bool(getattr(req, "echo", False)),
        ignore_eos=req.ignore_eos,
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def answer(
    serving,
    served: ServedModels,
    req,
    prompts: list[list[int]],
    object_name: str,
    deltas,
    whole,
    call_grammar: str | None = None,
    shape=None,
    echoed: list[str] | None = None,
):
    """Answer every prompt `n` times; `whole(text, reason)` shapes one choice's payload and
    finish reason, `deltas(pieces)` its streamed chunks (see `plain_deltas`), `shape(entries,
    tokenizer, offset)` its log-probabilities where asked; `echoed`: each prompt's text, put
    before its replies. `serving`: the server's limits and queue (serve/app.Serving)."""
    from fastapi.responses import StreamingResponse

    model_id = req.model
    jobs = [(p, replace(params(served, req, len(p), serving.max_tokens), call_grammar=call_grammar)) for p in prompts]
    leave = serving.queue.enter()
    try:
        replies = [Reply(served, model_id, prompt, _choice(p, j)) for prompt, p in jobs for j in range(req.n)]
    except TooLarge as e:
        leave()
        raise ApiError(
            400,
            f"{e} (its KV cache budget); ask for fewer max_tokens or a shorter prompt",
            param="max_tokens",
            code="kv_budget_exceeded",
        ) from None
    except BaseException:
        leave()
        raise
    reply_id = f"{'chatcmpl' if object_name.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    choices = _Choices(
        replies,
        {"id": reply_id, "object": object_name, "created": int(time.time()), "model": model_id},
        req.n,
        echoed,
        shape if jobs[0][1].logprobs is not None else None,
        served.tokenizer(model_id),
        sum(len(p) for p in prompts),
        leave,
    )
    if not req.stream:
        try:
            return choices.whole_body(whole)
        finally:
            choices.done()
    include_usage = req.stream_options is not None and req.stream_options.include_usage
    stream = choices.events(deltas, include_usage)
    weakref.finalize(stream, leave)  # a client gone before the first byte: the stream is dropped unstarted
    return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@dataclass
class _Choices:
    """A request's replies in flight, and what every body made of them shares."""

    replies: list[Reply]
    head: dict  # id, object, created, model
    n: int  # choices per prompt
    echoed: list[str] | None  # each prompt's text, put before its replies
    shape: Callable | None  # shape(entries, tokenizer, offset): log-probabilities; None where none were asked
    tokenizer: Any
    prompt_tokens: int
    leave: Callable[[], None]  # the request's place in the server's queue, given back

    def before(self, index: int) -> str:
        return self.echoed[index // self.n] if self.echoed else ""

    def logprobs(self, reply: Reply, entries, offset: int = 0, with_prompt: bool = False):
        if self.shape is None:
            return None
        if with_prompt:
            entries = [*reply.prompt_entries(), *entries]
        return self.shape(entries, self.tokenizer, offset)

    def done(self) -> None:
        for reply in self.replies:
            reply.stream.cancel()
        self.leave()

    def whole_body(self, whole) -> dict:
        """The response body once every reply is finished."""
        choices, completion_tokens = [], 0
        for index, reply in enumerate(self.replies):
            text, finished = reply.whole()
            completion_tokens += finished.completion_tokens
            before = self.before(index)
            payload, reason = whole(before + text, finished.reason)
            if self.echoed and self.shape is not None:  # the prompt's entries, then the reply's after the echo
                lp = self.logprobs(reply, [], 0, with_prompt=True)
                tail = self.logprobs(reply, reply.entries, len(before))
                lp = {k: lp[k] + tail[k] for k in lp}
            else:
                lp = self.logprobs(reply, reply.entries)
            choices.append({"index": index, **payload, "finish_reason": reason, "logprobs": lp})
        name = self.head["object"].removesuffix(".chunk")
        return {**self.head, "object": name, "choices": choices, "usage": usage(self.prompt_tokens, completion_tokens)}

    def _chunk(self, index: int, **choice) -> str:
        return _sse({**self.head, "choices": [{"index": index, **choice}]})

    def events(self, deltas, include_usage: bool) -> Iterator[str]:
        """Server-sent events as the replies come; an error after the status line went out is the last event."""
        completion_tokens = 0
        try:
            for index, reply in enumerate(self.replies):
                before = self.before(index)
                if self.head["object"].startswith("chat"):
                    role = {"role": "assistant", "content": ""}
                    yield self._chunk(index, delta=role, finish_reason=None, logprobs=None)
                elif self.echoed:
                    lp = self.logprobs(reply, [], 0, with_prompt=True)
                    yield self._chunk(index, text=before, finish_reason=None, logprobs=lp)
                for payload, reason, finished in deltas(iter(reply)):
                    if finished is not None:
                        completion_tokens += finished.completion_tokens
                    lp = self.logprobs(reply, reply.take_entries(), len(before))
                    yield self._chunk(index, **payload, finish_reason=reason, logprobs=lp)
            if include_usage:
                yield _sse({**self.head, "choices": [], "usage": usage(self.prompt_tokens, completion_tokens)})
            yield "data: [DONE]\n\n"
        except ModelGone as e:  # removed while the reply waited its turn
            yield _sse(gone_body(e.model_id))
        except Exception as e:  # the status line is sent already: the error goes in the stream
            log.error("streaming reply failed", exc_info=e)
            yield _sse(error_body(f"internal error: {type(e).__name__}", kind="server_error"))
        finally:
            self.done()


def _choice(p: Params, j: int) -> Params:
    """Choice j of a seeded request samples with seed + j: each choice reproducible on its own,
    whatever other requests run between them."""
    return p if j == 0 or p.seed is None else replace(p, seed=p.seed + j)


def plain_deltas(key: str):
    """Streamed chunks of a reply that is text only: each piece as `{key: piece}`, then the end."""

    def deltas(pieces):
        for item in pieces:
            if isinstance(item, Finished):
                yield {key: ""}, item.reason, item
            elif item:
                yield {key: item}, None, None

    return deltas


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
