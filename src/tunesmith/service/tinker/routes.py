"""The HTTP face of the Tinker API (`/api/v1/...`), as the unmodified `tinker` client speaks it.

Callers authenticate with `X-API-Key` (the client sends its `TINKER_API_KEY` there; it insists
the key starts with `tml-`, so give Tinker users keys of that form in the keys file). A call that
does work answers `{"request_id": ...}` at once and its result comes from `retrieve_future`.
Errors: 400 for a request this server cannot take, 401 without a known key, 404 for what the
caller cannot see, 410 for a session or model the service lost in a restart; a call that fails
while it runs is a future whose result is `{"error", "category": "user" | "server"}`.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from tunesmith.errors import UserError
from tunesmith.service.tinker import wire
from tunesmith.service.tinker.server import Lost, TinkerServer, prompt_tokens, sample_params

PROTO = "application/x-protobuf"
LONG_POLL_S = 30.0  # retrieve_future waits this long for a result before "try again" (the client gives up at 45)

router = APIRouter(prefix="/api/v1")


class ApiRefusal(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def add_tinker_routes(app, server: TinkerServer, callers) -> None:
    app.state.tinker = server
    app.state.tinker_callers = callers

    @app.exception_handler(ApiRefusal)
    async def _refused(request, e: ApiRefusal):
        return JSONResponse({"detail": e.message}, status_code=e.status)

    app.include_router(router)


def tinker(request: Request) -> TinkerServer:
    return request.app.state.tinker


def tenant(request: Request) -> str:
    key = request.headers.get("x-api-key", "")
    caller = request.app.state.tinker_callers(key) if key else None
    if caller is None:
        raise ApiRefusal(401, "Incorrect API key provided (X-API-Key).")
    return caller


async def body(request: Request) -> dict:
    raw = await request.body()
    try:
        found = json.loads(raw or b"{}")
    except ValueError as e:
        raise ApiRefusal(400, f"request body: not JSON ({e})") from None
    if not isinstance(found, dict):
        raise ApiRefusal(400, "request body: a JSON object expected")
    return found


def attempt(fn, *args):
    """Run a server call; its errors become the status codes the client expects."""
    try:
        return fn(*args)
    except Lost as e:
        raise ApiRefusal(410, str(e)) from None
    except UserError as e:
        raise ApiRefusal(400, str(e)) from None
    except LookupError as e:
        raise ApiRefusal(404, str(e.args[0] if e.args else e)) from None
    except (KeyError, TypeError, ValueError) as e:
        raise ApiRefusal(400, f"request: {type(e).__name__}: {e}") from None


def future(request_id: str, model_id: str | None = None) -> dict:
    return {"request_id": request_id, "model_id": model_id}


# --- the service, the session -----------------------------------------------------------------------


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/get_server_capabilities")
def capabilities(srv: TinkerServer = Depends(tinker), _: str = Depends(tenant)):
    return {"supported_models": [{"model_name": base, "trainable": True, "sampleable": True} for base in srv.bases]}


@router.post("/client/config")
def client_config(_: str = Depends(tenant)):
    # plain API keys, no compressed bodies, httpx's own transport; samples polled one by one
    return {
        "pjwt_auth_enabled": False,
        "proto_compress_fwdbwd": False,
        "use_pyqwest_transport": False,
        "parallel_fwdbwd_chunks": False,
        "custom_loss_server_side": False,
        "sample_use_retrieve_futures": False,
        "sample_join_sampling_session": False,
    }


@router.post("/client/dynamic_config")
def client_dynamic_config(_: str = Depends(tenant)):
    return {"refresh_interval_sec": 3600, "sample_cancel_enabled": False}


@router.post("/telemetry")
def telemetry(_: str = Depends(tenant)):
    return {"status": "accepted"}  # the client's usage events: not kept


@router.post("/create_session")
async def create_session(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    await body(request)
    return {"type": "create_session", "session_id": srv.create_session(who)}


@router.post("/session_heartbeat")
async def heartbeat(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    found = await body(request)
    attempt(srv.heartbeat, found.get("session_id", ""), who)
    return {"type": "session_heartbeat"}


@router.post("/sessions/{session_id}/finish")
def finish_session(session_id: str, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    attempt(srv.end_session, session_id, who)  # its models leave memory; saved states stay
    return Response(status_code=200)


# --- training ---------------------------------------------------------------------------------------


@router.post("/create_model")
async def create_model(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    b = await body(request)
    optimizer = (b.get("optimizer_config") or {}).get("type", "adamw")
    if optimizer != "adamw":
        raise ApiRefusal(400, f"optimizer_config {optimizer}: this server has adamw")
    request_id, model_id = attempt(
        srv.create_model,
        who,
        b.get("session_id", ""),
        int(b.get("model_seq_id", 0)),
        b.get("base_model", ""),
        b.get("lora_config"),
    )
    return future(request_id, model_id)


@router.post("/get_info")
async def get_info(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    return attempt(srv.info, (await body(request)).get("model_id", ""), who)


@router.post("/forward_backward")
async def forward_backward(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    if request.headers.get("content-encoding"):
        raise ApiRefusal(400, f"Content-Encoding {request.headers['content-encoding']}: send the body uncompressed")
    if PROTO not in request.headers.get("content-type", ""):
        raise ApiRefusal(400, f"forward_backward: a protobuf body ({PROTO}) expected, as the tinker client sends it")
    parsed = attempt(wire.parse_forward_backward, await request.body())
    return future(attempt(srv.forward_backward, who, parsed), parsed["model_id"])


@router.post("/optim_step")
async def optim_step(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    b = await body(request)
    params = b.get("adam_params") or b.get("optim_params") or b.get("optimizer_params") or {}
    if params.get("type", "adam") not in ("adam", "adamw"):
        raise ApiRefusal(400, f"optimizer {params['type']}: this server has adamw")
    return future(attempt(srv.optim_step, who, b.get("model_id", ""), b.get("seq_id"), params), b.get("model_id"))


@router.post("/save_weights")
async def save_weights(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    b = await body(request)
    return future(
        attempt(srv.save_state, who, b.get("model_id", ""), b.get("seq_id"), b.get("path"), bool(b.get("overwrite"))),
        b.get("model_id"),
    )


@router.post("/load_weights")
async def load_weights(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    b = await body(request)
    if b.get("model_id"):
        return future(
            attempt(srv.load_state, who, b["model_id"], b.get("seq_id"), b.get("path", ""), bool(b.get("optimizer"))),
            b["model_id"],
        )
    model_id = f"{b.get('session_id', '')}:train:{int(b.get('model_seq_id', 0))}"
    return future(
        attempt(
            srv.create_from_state,
            who,
            b.get("session_id", ""),
            int(b.get("model_seq_id", 0)),
            b.get("path", ""),
            bool(b.get("optimizer")),
        ),
        model_id,
    )


@router.post("/save_weights_for_sampler")
async def save_for_sampler(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    b = await body(request)
    return future(
        attempt(srv.save_sampler, who, b.get("model_id", ""), b.get("seq_id"), b.get("path")), b.get("model_id")
    )


@router.get("/training_runs")
def training_runs(offset: int = 0, limit: int = 20, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    runs = [_training_run(srv, r) for r in srv.runs.runs(who)]
    return {
        "training_runs": runs[offset : offset + limit],
        "cursor": {"offset": offset, "limit": limit, "total_count": len(runs)},
    }


@router.get("/training_runs/{model_id}")
def training_run(model_id: str, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    record = attempt(srv.runs.record, model_id, who)
    if record is None:
        raise ApiRefusal(404, f"training run {model_id}: no such run")
    return _training_run(srv, record)


@router.get("/training_runs/{model_id}/checkpoints")
def checkpoints(model_id: str, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    if attempt(srv.runs.record, model_id, who) is None:
        raise ApiRefusal(404, f"training run {model_id}: no such run")
    return {"checkpoints": srv.runs.checkpoints(model_id)}


def _training_run(srv: TinkerServer, record: dict) -> dict:
    found = srv.runs.checkpoints(record["model_id"])
    last = {t: next((c for c in reversed(found) if c["checkpoint_type"] == t), None) for t in ("training", "sampler")}
    return {
        "training_run_id": record["model_id"],
        "base_model": record["base"],
        "model_owner": record["tenant"],
        "is_lora": record["spec"]["rank"] is not None,
        "lora_rank": record["spec"]["rank"],
        "last_request_time": found[-1]["time"] if found else record["created"],
        "last_checkpoint": last["training"],
        "last_sampler_checkpoint": last["sampler"],
    }


# --- sampling ---------------------------------------------------------------------------------------


@router.post("/create_sampling_session")
async def create_sampling_session(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    b = await body(request)
    sampler_id = attempt(srv.create_sampler, who, b.get("session_id", ""), b.get("base_model"), b.get("model_path"))
    return {"type": "create_sampling_session", "sampling_session_id": sampler_id}


@router.get("/samplers/{sampler_id}")
def get_sampler(sampler_id: str, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    return attempt(srv.sampler_info, sampler_id, who)


@router.post("/asample")
async def asample(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    b = await body(request)
    parsed = {
        "sampling_session_id": b.get("sampling_session_id"),
        "model_path": b.get("model_path"),
        "base_model": b.get("base_model"),
        "prompt": attempt(prompt_tokens, b.get("prompt")),
        "params": attempt(sample_params, b),
    }
    request_id = attempt(srv.sample, who, parsed)
    # the client stamps these on the sequences it gets back (one per sample, in order)
    return {
        **future(request_id),
        "sample_sequence_ids": [f"{request_id}:{i}" for i in range(parsed["params"].num_samples)],
    }


# --- futures ----------------------------------------------------------------------------------------


@router.post("/retrieve_future")
async def retrieve_future(request: Request, srv: TinkerServer = Depends(tinker), who: str = Depends(tenant)):
    request_id = (await body(request)).get("request_id", "")
    known, outcome = await srv.futures.wait(request_id, who, LONG_POLL_S)
    if not known:
        raise ApiRefusal(404, f"request {request_id}: no such request")
    if outcome is None:
        return {"type": "try_again", "request_id": request_id, "queue_state": "active"}
    if outcome.error is not None:
        return {"error": outcome.error, "category": outcome.category}
    if outcome.proto is not None and PROTO in request.headers.get("accept", ""):
        return Response(outcome.proto, media_type=PROTO)
    return outcome.json
