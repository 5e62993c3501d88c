"""The OpenAI-compatible HTTP API over `ServedModels`, for any OpenAI client unmodified.

  GET  /v1/models, /v1/models/{id}   the base and each adapter by name
  POST /v1/chat/completions          chat (the model's chat template), streamed as server-sent events or whole;
                                     `tools`, `tool_choice`, `parallel_tool_calls` (serve/tool_replies.py)
  POST /v1/completions               plain text continuation
  GET  /health
  GET  /metrics                      Prometheus text: queue, active rows, KV cache, tokens/s, time to first token

Bounded everywhere a request could make the server work without limit: body size, messages,
choices, `max_tokens`, waiting requests (429 beyond the queue). Errors are OpenAI error bodies:
400 bad input, 401 bad key, 404 unknown model, 413 body too large, 429 queue full. The `model`
field is only ever looked up among the names served, never read as a path.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
import weakref
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Callable, Iterator

from fastapi import Request  # resolved by name in the handlers' annotations

from tunesmith.generation.engine import TooLarge
from tunesmith.serve import logprobs as logprobs_shapes
from tunesmith.serve.generation import Finished, Params, Reply
from tunesmith.serve.models import ModelGone, ServedModels
from tunesmith.serve.protocol import ChatRequest, CompletionRequest, error_body
from tunesmith.serve.tool_replies import ToolReplies

MAX_BODY_BYTES = 1 << 20
log = logging.getLogger("tunesmith.serve")


def gone_body(model_id: str) -> dict:
    return error_body(f"The model `{model_id}` does not exist (it was removed)", param="model", code="model_not_found")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.body = status, error_body(message, kind, param, code)


class Queue:
    """Requests admitted: running plus waiting their turn at the model."""

    def __init__(self, limit: int):
        self.limit, self.count, self.lock = limit, 0, threading.Lock()

    def enter(self):
        """Admit a request; returns its `leave`, which counts once however often it is called."""
        with self.lock:
            if self.count >= self.limit:
                raise ApiError(429, f"server busy: {self.limit} requests already running or waiting; retry shortly",
                               code="queue_full", kind="rate_limit_error")
            self.count += 1
        left = threading.Event()

        def leave() -> None:
            with self.lock:
                if not left.is_set():
                    left.set()
                    self.count -= 1

        return leave


def build_app(catalog: ServedModels, api_key: str | None = None, max_tokens: int = 1024, max_queue: int = 128,
              max_body: int = MAX_BODY_BYTES, callers: Callable[[str], str | None] | None = None,
              body_limits: dict[str, int] | None = None):
    """The app over `catalog` (a ServedModels, or anything answering `visible_ids`, `holder`, `engines` and
    `parent` per caller). One `api_key` for every client, or `callers`: the caller (tenant) a bearer
    token belongs to, None for an unknown token; `body_limits` raises `max_body` for path prefixes."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    from tunesmith.data.chat import prompt_ids
    from tunesmith.data.layouts import check_messages
    from tunesmith.data.tool_calls import check_tools
    from tunesmith.eval.constrained import call_grammar

    @asynccontextmanager
    async def lifespan(app):
        import anyio.to_thread

        # each request waits for its reply in a worker thread: as many threads as requests admitted
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, max_queue + 16)
        yield

    app = FastAPI(title="tunesmith serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    queue = app.state.queue = Queue(max_queue)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            message = "not a parameter this server supports"
        return JSONResponse(error_body(f"{where}: {message}" if where else message, param=where or None), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        return JSONResponse(error_body(str(e.detail)), status_code=e.status_code)

    @app.exception_handler(ModelGone)
    async def _gone(request, e: ModelGone):  # removed while the request waited: as if it had never been there
        return JSONResponse(gone_body(e.model_id), status_code=404)

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", kind="server_error"), status_code=500)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        request.state.caller = None
        if request.url.path.startswith("/v1/") and (api_key is not None or callers is not None):
            given = request.headers.get("authorization", "")
            if callers is not None:
                request.state.caller = callers(given.removeprefix("Bearer ") if given.startswith("Bearer ") else "")
                refused = request.state.caller is None
            else:
                refused = not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())
            if refused:
                return JSONResponse(error_body("Incorrect API key provided.", code="invalid_api_key"), status_code=401)
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return JSONResponse(error_body("a request body needs a Content-Length"), status_code=411)
            limit = next((n for prefix, n in (body_limits or {}).items() if request.url.path.startswith(prefix)), max_body)
            if int(length) > limit:
                return JSONResponse(error_body(f"request body of {length} bytes is over this server's limit of "
                                               f"{limit}", code="request_too_large"), status_code=413)
        return await call_next(request)

    def card(model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "tunesmith", "root": model_id,
                "parent": catalog.parent(model_id)}

    def known(model_id: str, caller: str | None) -> ServedModels:
        """The holder serving `model_id` to `caller` (404 when it is not there, or not theirs)."""
        served = catalog.holder(model_id, caller)
        if served is None:
            raise ApiError(404, f"The model `{model_id}` does not exist; this server has: "
                           f"{', '.join(catalog.visible_ids(caller))}", param="model", code="model_not_found")
        return served

    def params(served: ServedModels, req, prompt_len: int) -> Params:
        room = served.context_length - prompt_len
        wanted = req.limit()
        if wanted is not None and wanted > max_tokens:
            raise ApiError(400, f"max_tokens {wanted} is over this server's limit of {max_tokens}", param="max_tokens")
        limit = wanted if wanted is not None else min(max_tokens, room)
        if limit > room:
            raise ApiError(400, f"this model's context is {served.context_length} tokens; the prompt has {prompt_len} "
                           f"and max_tokens asks for {limit} more", param="messages", code="context_length_exceeded")
        try:
            logprobs = req.logprobs_wanted()
        except ValueError as e:
            raise ApiError(400, str(e), param="logprobs") from None
        return Params(limit, req.temperature, req.top_p, req.stop, req.seed, logprobs=logprobs,
                      echo=bool(getattr(req, "echo", False)))

    @app.get("/health")
    def health():
        return {"status": "ok", "models": catalog.visible_ids(None), "requests": queue.count}  # running + waiting

    @app.get("/metrics")
    def metrics():
        from fastapi.responses import Response

        from tunesmith.serve.metrics import render

        return Response(render(catalog.engines), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    def models(request: Request):
        return {"object": "list", "data": [card(m) for m in catalog.visible_ids(request.state.caller)]}

    @app.get("/v1/models/{model_id:path}")
    def model(model_id: str, request: Request):
        known(model_id, request.state.caller)
        return card(model_id)

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def run(served: ServedModels, req, prompts: list[list[int]], object_name: str, deltas, whole,
            call_grammar: str | None = None, shape=None, echoed: list[str] | None = None):
        """Answer every prompt `n` times; `whole(text, reason)` shapes one choice's payload and
        finish reason, `deltas(pieces)` its streamed chunks (see `plain_deltas`), `shape(entries,
        offset)` its log-probabilities where asked; `echoed`: each prompt's text, put before its
        replies. Every choice is submitted to the engine at once, so they decode together."""
        model_id = req.model
        jobs = [(p, replace(params(served, req, len(p)), call_grammar=call_grammar)) for p in prompts]
        scored = jobs[0][1].logprobs is not None
        tokenizer = served.tokenizer(model_id)

        def logprobs_of(reply: Reply, entries, offset: int = 0, with_prompt: bool = False):
            if not scored:
                return None
            if with_prompt:
                entries = [*reply.prompt_entries(), *entries]
            return shape(entries, tokenizer, offset)
        leave = queue.enter()
        try:
            replies = [Reply(served, model_id, prompt, _choice(p, j)) for prompt, p in jobs for j in range(req.n)]
        except TooLarge as e:
            leave()
            raise ApiError(400, f"{e} (its KV cache budget); ask for fewer max_tokens or a shorter prompt",
                           param="max_tokens", code="kv_budget_exceeded") from None
        except BaseException:
            leave()
            raise
        reply_id = f"{'chatcmpl' if object_name.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        head = {"id": reply_id, "object": object_name, "created": int(time.time()), "model": model_id}
        prompt_tokens = sum(len(p) for p in prompts)
        if not req.stream:
            try:
                choices, completion_tokens = [], 0
                for index, reply in enumerate(replies):
                    text, finished = reply.whole()
                    completion_tokens += finished.completion_tokens
                    before = echoed[index // req.n] if echoed else ""
                    payload, reason = whole(before + text, finished.reason)
                    if echoed and scored:  # the prompt's entries, then the reply's after the echoed text
                        lp = logprobs_of(reply, [], 0, with_prompt=True)
                        tail = logprobs_of(reply, reply.entries, len(before))
                        lp = {k: lp[k] + tail[k] for k in lp}
                    else:
                        lp = logprobs_of(reply, reply.entries)
                    choices.append({"index": index, **payload, "finish_reason": reason, "logprobs": lp})
            finally:
                for reply in replies:
                    reply.stream.cancel()
                leave()
            return {**head, "object": object_name.removesuffix(".chunk"), "choices": choices,
                    "usage": usage(prompt_tokens, completion_tokens)}

        def events() -> Iterator[str]:
            completion_tokens = 0
            try:
                for index, reply in enumerate(replies):
                    before = echoed[index // req.n] if echoed else ""
                    if object_name.startswith("chat"):
                        yield _sse({**head, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                         "finish_reason": None, "logprobs": None}]})
                    elif echoed:
                        yield _sse({**head, "choices": [{"index": index, "text": before, "finish_reason": None,
                                                         "logprobs": logprobs_of(reply, [], 0, with_prompt=True)}]})
                    for payload, reason, finished in deltas(iter(reply)):
                        if finished is not None:
                            completion_tokens += finished.completion_tokens
                        yield _sse({**head, "choices": [{"index": index, **payload, "finish_reason": reason,
                                                         "logprobs": logprobs_of(reply, reply.take_entries(),
                                                                                 len(before))}]})
                if req.stream_options is not None and req.stream_options.include_usage:
                    yield _sse({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
                yield "data: [DONE]\n\n"
            except ModelGone as e:  # removed while the reply waited its turn
                yield _sse(gone_body(e.model_id))
            except Exception as e:  # the status line is sent already: the error goes in the stream
                log.error("streaming reply failed", exc_info=e)
                yield _sse(error_body(f"internal error: {type(e).__name__}", kind="server_error"))
            finally:
                for reply in replies:
                    reply.stream.cancel()
                leave()

        stream = events()
        weakref.finalize(stream, leave)  # a client gone before the first byte: the stream is dropped unstarted
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest, request: Request):
        served = known(req.model, request.state.caller)
        tokenizer = served.tokenizer(req.model)
        tools, messages = checked_chat(req)
        replies = ToolReplies(tools, req.tool_choice, req.parallel_tool_calls)
        try:
            prompt = prompt_ids(tokenizer, messages, tools)
        except Exception as e:  # the chat template refused these messages (e.g. roles out of order)
            raise ApiError(400, f"messages: the chat template refused them ({str(e).splitlines()[0][:200]})",
                           param="messages") from None
        forced = replies.forced()
        grammar = call_grammar(tools, forced[1], forced[0]) if forced else None

        def whole(text: str, reason: str):
            message, reason = replies.message(text, reason)
            return {"message": message}, reason

        def deltas(pieces):
            for delta, reason, finished in replies.deltas(pieces):
                yield {"delta": delta}, reason, finished

        return run(served, req, [prompt], "chat.completion.chunk" if req.stream else "chat.completion", deltas, whole, grammar,
                   shape=lambda entries, tokenizer, offset: logprobs_shapes.chat(entries, tokenizer))

    def checked_chat(req: ChatRequest) -> tuple[list[dict] | None, list[dict]]:
        """The request's tools and messages, checked as training data is (400 naming the parameter)."""
        tools = req.tool_specs()
        try:
            tools = check_tools(tools) if tools else None
        except ValueError as e:
            raise ApiError(400, str(e), param="tools") from None
        choice = req.tool_choice
        if choice not in (None, "auto", "none") and not tools:
            raise ApiError(400, "tool_choice asks for a call, but the request has no tools", param="tool_choice")
        if choice is not None and not isinstance(choice, str) and choice.function.name not in {t["function"]["name"] for t in tools}:
            raise ApiError(400, f"tool_choice names {choice.function.name!r}, which is not among the tools", param="tool_choice")
        try:
            messages = check_messages([m.as_chat() for m in req.messages], "messages", need_assistant=False, tools=tools,
                                      system_first=False)
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        return tools, messages

    @app.post("/v1/completions")
    def completions(req: CompletionRequest, request: Request):
        served = known(req.model, request.state.caller)
        tokenizer = served.tokenizer(req.model)
        prompts = [tokenizer(p)["input_ids"] for p in req.prompts()]
        if any(not p for p in prompts):
            raise ApiError(400, "prompt: empty", param="prompt")
        return run(served, req, prompts, "text_completion", plain_deltas("text"), lambda text, reason: ({"text": text}, reason),
                   shape=lambda entries, tokenizer, offset: logprobs_shapes.completion(entries, tokenizer, req.logprobs or 0,
                                                                                       offset),
                   echoed=req.prompts() if req.echo else None)

    return app


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
