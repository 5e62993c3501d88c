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

This module makes the app: its state (`Serving`), error bodies, and the guard every request
passes (key, body size); the routes are `serve/routes.py`'s router, the reply bodies
`serve/replies.py`'s.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Request  # resolved by name in the middleware's annotation

from tunesmith.serve.models import Catalog, ModelGone
from tunesmith.serve.protocol import ApiError, error_body, gone_body

__all__ = ["ApiError", "Queue", "Serving", "build_app"]

MAX_BODY_BYTES = 1 << 20
log = logging.getLogger("tunesmith.serve")


class Queue:
    """Requests admitted: running plus waiting their turn at the model."""

    def __init__(self, limit: int):
        self.limit, self.count, self.lock = limit, 0, threading.Lock()

    def enter(self):
        """Admit a request; returns its `leave`, which counts once however often it is called."""
        with self.lock:
            if self.count >= self.limit:
                raise ApiError(
                    429,
                    f"server busy: {self.limit} requests already running or waiting; retry shortly",
                    code="queue_full",
                    kind="rate_limit_error",
                )
            self.count += 1
        left = threading.Event()

        def leave() -> None:
            with self.lock:
                if not left.is_set():
                    left.set()
                    self.count -= 1

        return leave


@dataclass
class Serving:
    """What the inference routes work on, kept in `app.state.serving`: the catalog (a
    ServedModels, or anything answering `visible_ids`, `holder`, `parent` and `engines`), the most
    tokens a reply may ask for, and the queue of requests."""

    catalog: object
    max_tokens: int
    queue: Queue
    created: int = field(default_factory=lambda: int(time.time()))


def build_app(
    catalog: Catalog,
    api_key: str | None = None,
    max_tokens: int = 1024,
    max_queue: int = 128,
    max_body: int = MAX_BODY_BYTES,
    callers: Callable[[str], str | None] | None = None,
    body_limits: dict[str, int] | None = None,
):
    """The app over `catalog`. One `api_key` for every client, or `callers`: the caller (tenant)
    a bearer token belongs to, None for an unknown token; `body_limits` raises `max_body` for
    path prefixes."""
    from fastapi import FastAPI

    from tunesmith.serve.routes import router

    @asynccontextmanager
    async def lifespan(app):
        import anyio.to_thread

        # each request waits for its reply in a worker thread: as many threads as requests admitted
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, max_queue + 16)
        yield

    app = FastAPI(title="tunesmith serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.serving = Serving(catalog, max_tokens, Queue(max_queue))
    app.state.queue = app.state.serving.queue

    _answer_errors(app)
    _guard_requests(app, api_key, callers, max_body, body_limits)
    app.include_router(router)
    return app


def _answer_errors(app) -> None:
    """Every error as OpenAI's error body with its status; the server keeps serving."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

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
        return JSONResponse(
            error_body(f"{where}: {message}" if where else message, param=where or None), status_code=400
        )

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


def _guard_requests(app, api_key: str | None, callers, max_body: int, body_limits: dict[str, int] | None) -> None:
    """Before any route: the caller's key (401), a POST's Content-Length (411) and its size (413)."""
    from fastapi.responses import JSONResponse

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
            limit = next(
                (n for prefix, n in (body_limits or {}).items() if request.url.path.startswith(prefix)), max_body
            )
            if int(length) > limit:
                return JSONResponse(
                    error_body(
                        f"request body of {length} bytes is over this server's limit of {limit}",
                        code="request_too_large",
                    ),
                    status_code=413,
                )
        return await call_next(request)
