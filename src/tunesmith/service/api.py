"""OpenAI's Files and Fine-tuning API, added to the inference app (serve/app.py):

  POST /v1/files  GET /v1/files  GET|DELETE /v1/files/{id}  GET /v1/files/{id}/content
  POST /v1/fine_tuning/jobs  GET /v1/fine_tuning/jobs  GET /v1/fine_tuning/jobs/{id}
  POST /v1/fine_tuning/jobs/{id}/cancel|pause|resume
  GET  /v1/fine_tuning/jobs/{id}/events|checkpoints
  DELETE /v1/models/{fine-tuned model}

Objects, ids, statuses, list pages and error bodies are OpenAI's, so the official client parses
them. Every object belongs to the tenant whose key created it; any other key gets 404 for it, as
if it did not exist. The routes are one router; what they work on (`Service`: the store, the
files, the scheduler, the models) is the app's state, and each handler names what it needs as a
dependency: the caller, the caller's own file or job (404 otherwise)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response

from tunesmith.serve.protocol import ApiError
from tunesmith.service.files import PURPOSES, FileStore, OverQuota, TooLarge
from tunesmith.service.job_spec import JobRequest
from tunesmith.service.policy import grader_refusal
from tunesmith.service.scheduler import Scheduler
from tunesmith.service.store import ACTIVE, FINISHED, Store, new_id, now

if TYPE_CHECKING:
    from tunesmith.service.catalog import ServiceCatalog

MAX_PAGE = 100
router = APIRouter()


@dataclass
class ServiceParts:
    """What the fine-tuning routes work on, kept in `app.state.service`."""

    store: Store
    files: FileStore
    scheduler: Scheduler
    catalog: ServiceCatalog


def add_routes(app, store: Store, files: FileStore, scheduler: Scheduler, catalog) -> None:
    app.state.service = ServiceParts(store, files, scheduler, catalog)
    app.include_router(router)


def parts(request: Request) -> ServiceParts:
    return request.app.state.service


def caller(request: Request) -> str:
    """The tenant whose key the request carries (serve/app.py's guard resolved it)."""
    return request.state.caller


def page(items: list[dict], after: str | None, limit: int, cap: int = MAX_PAGE, key: str = "id") -> dict:
    """OpenAI's cursor page: the items after the one whose id is `after`, `limit` of them."""
    if after is not None:
        ids = [i[key] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = max(1, min(limit, cap))
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "has_more": len(items) > limit,
        "first_id": data[0][key] if data else None,
        "last_id": data[-1][key] if data else None,
    }


def job_of(store: Store, job_id: str, tenant: str) -> dict:
    """The job, if it is the tenant's; a 404 as OpenAI gives for an id that does not exist otherwise."""
    job = store.job(job_id, tenant)
    if job is None:
        raise ApiError(
            404,
            f"Could not find fine-tuning job: {job_id}",
            param="fine_tuning_job_id",
            code="fine_tuning_job_not_found",
        )
    return job


def own_job(job_id: str, svc: ServiceParts = Depends(parts), tenant: str = Depends(caller)) -> dict:
    return job_of(svc.store, job_id, tenant)


def own_file(file_id: str, svc: ServiceParts = Depends(parts), tenant: str = Depends(caller)) -> tuple[dict, str]:
    found = svc.store.file(file_id, tenant)
    if found is None:
        raise ApiError(404, f"No such File object: {file_id}", param="id", code="file_not_found")
    return found


# --- files -----------------------------------------------------------------------------------------
@router.post("/v1/files")
def upload(
    file: UploadFile = File(...),
    purpose: str = Form(...),
    svc: ServiceParts = Depends(parts),
    tenant: str = Depends(caller),
):
    if purpose not in PURPOSES:
        raise ApiError(400, f"purpose {purpose!r}: this server takes files for {', '.join(PURPOSES)}", param="purpose")
    name = (file.filename or "").rsplit("/", 1)[-1]
    if not name.endswith(".jsonl"):
        raise ApiError(
            400, f"Invalid file format for Fine-Tuning API: {name or 'the file'} must be .jsonl", param="file"
        )
    quota = svc.scheduler.policy_of(tenant).max_stored_mb
    try:
        return svc.files.save(tenant, name[:256], purpose, file.file, quota << 20 if quota else None)
    except OverQuota as e:
        raise ApiError(413, str(e), param="file", code="storage_limit_exceeded") from None
    except TooLarge as e:
        raise ApiError(413, str(e), param="file", code="file_too_large") from None


@router.get("/v1/files")
def list_files(
    purpose: str | None = None,
    after: str | None = None,
    limit: int = 10000,
    svc: ServiceParts = Depends(parts),
    tenant: str = Depends(caller),
):
    return page(svc.store.files(tenant, purpose), after, limit, cap=10000)


@router.get("/v1/files/{file_id}")
def get_file(found: tuple[dict, str] = Depends(own_file)):
    return found[0]


@router.get("/v1/files/{file_id}/content")
def file_content(found: tuple[dict, str] = Depends(own_file), svc: ServiceParts = Depends(parts)):
    return Response(svc.files.path(found[1]).read_bytes(), media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
def delete_file(file_id: str, found: tuple[dict, str] = Depends(own_file), svc: ServiceParts = Depends(parts)):
    svc.files.delete(file_id)
    return {"id": file_id, "object": "file", "deleted": True}


# --- jobs ------------------------------------------------------------------------------------------
@router.post("/v1/fine_tuning/jobs")
def create_job(req: JobRequest, svc: ServiceParts = Depends(parts), tenant: str = Depends(caller)):
    store, scheduler = svc.store, svc.scheduler
    if req.model not in scheduler.bases:
        raise ApiError(
            400,
            f"Model {req.model} is not available for fine-tuning on this server; it trains: "
            f"{', '.join(scheduler.bases)}",
            param="model",
            code="model_not_available",
        )
    kind = req.method_type()
    settings_of_rl = req.method.reinforcement if req.method is not None else None
    grader = settings_of_rl.grader if settings_of_rl is not None else None
    if kind == "reinforcement" and grader is None:
        raise ApiError(
            400, "method.reinforcement.grader: a reinforcement job needs a grader", param="method.reinforcement"
        )
    if kind == "reinforcement" and grader is not None:
        refusal = grader_refusal(grader, scheduler.policy_of(tenant), tenant, scheduler.bases)
        if refusal is not None:
            raise ApiError(400, refusal, param="method.reinforcement.grader")
    if req.hyperparameters is not None and req.method is not None:
        raise ApiError(
            400,
            "hyperparameters: give them in method.<type>.hyperparameters (not both places)",
            param="hyperparameters",
        )
    if kind != "dpo" and req.given().beta is not None:
        raise ApiError(400, "beta is a dpo hyperparameter", param=f"method.{kind}.hyperparameters.beta")
    for param in ("training_file", "validation_file"):
        file_id = getattr(req, param)
        if file_id is None:
            continue
        found = store.file(file_id, tenant)
        if found is None:
            raise ApiError(400, f"invalid {param}: {file_id} does not exist", param=param, code="file_not_found")
        if found[0]["purpose"] != "fine-tune":
            raise ApiError(
                400, f"invalid {param}: {file_id} has purpose {found[0]['purpose']}, not fine-tune", param=param
            )
    given = req.given().model_dump(exclude_none=True)
    hyper = {k: given.get(k, "auto") for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    extra = {"dpo": ("beta",), "reinforcement": ("compute_multiplier", "eval_interval", "eval_samples")}.get(kind, ())
    method_hp = {**hyper, **{k: given.get(k, "auto") for k in extra}}
    settings: dict[str, Any] = {"hyperparameters": method_hp}
    if kind == "reinforcement" and grader is not None:
        settings["grader"] = grader.model_dump(exclude_none=True)
    job: dict[str, Any] = {
        "object": "fine_tuning.job",
        "id": new_id("ftjob-"),
        "model": req.model,
        "created_at": now(),
        "finished_at": None,
        "fine_tuned_model": None,
        "organization_id": f"org-{tenant}",
        "result_files": [],
        "status": "validating_files",
        "validation_file": req.validation_file,
        "training_file": req.training_file,
        "hyperparameters": hyper,
        "trained_tokens": None,
        "error": None,
        "user_provided_suffix": req.suffix,
        "seed": req.seed if req.seed is not None else secrets.randbelow(2**31),
        "estimated_finish": None,
        "integrations": [],
        "metadata": req.metadata,
        "method": {"type": kind, kind: settings},
    }
    store.add_job(tenant, job, req.model_dump(exclude_none=True))
    store.add_event(
        job["id"],
        f"Validating training file: {req.training_file}"
        + (f" and validation file: {req.validation_file}" if req.validation_file else ""),
    )
    scheduler.poke()
    return job


@router.get("/v1/fine_tuning/jobs")
def list_jobs(
    request: Request,
    after: str | None = None,
    limit: int = 20,
    svc: ServiceParts = Depends(parts),
    tenant: str = Depends(caller),
):
    wanted = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    jobs = [j for j in svc.store.jobs(tenant) if all((j.get("metadata") or {}).get(k) == v for k, v in wanted.items())]
    found = page(jobs, after, limit)
    return {"object": "list", "data": found["data"], "has_more": found["has_more"]}


@router.get("/v1/fine_tuning/jobs/{job_id}")
def get_job(job: dict = Depends(own_job)):
    return job


def _stop(svc: ServiceParts, job: dict, tenant: str, action: str, refusal, waiting: tuple[str, ...], **moved) -> dict:
    """Cancel or pause: a job in one of the `waiting` states moves at once; a running one is asked
    to stop (its worker checkpoints within a step). Each write is conditional, as the scheduler may
    move the job between a look and a write; `refusal(job)` is why it cannot be done, if it cannot."""
    store, job_id = svc.store, job["id"]
    for _ in range(3):
        why = refusal(job)
        if why is not None:
            raise ApiError(400, why, param="fine_tuning_job_id")
        changed = store.transition(job_id, waiting, **moved)
        if changed is not None:
            store.add_event(job_id, "Job cancelled" if action == "cancel" else "Job paused before it started")
            return changed
        if store.request_control(job_id, action):
            svc.scheduler.poke()
            return job_of(store, job_id, tenant)
        job = job_of(store, job_id, tenant)
    raise ApiError(409, f"Job {job_id} kept changing state; try again", param="fine_tuning_job_id")


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel(
    job_id: str, job: dict = Depends(own_job), svc: ServiceParts = Depends(parts), tenant: str = Depends(caller)
):
    def refusal(j: dict) -> str | None:
        if j["status"] in FINISHED:
            return f"Job {job_id} has already {j['status']}; there is nothing to cancel"
        return None

    return _stop(
        svc,
        job,
        tenant,
        "cancel",
        refusal,
        ("validating_files", "queued", "paused"),
        status="cancelled",
        finished_at=now(),
        estimated_finish=None,
    )


@router.post("/v1/fine_tuning/jobs/{job_id}/pause")
def pause(job_id: str, job: dict = Depends(own_job), svc: ServiceParts = Depends(parts), tenant: str = Depends(caller)):
    def refusal(j: dict) -> str | None:
        if j["status"] not in ACTIVE:
            return f"Job {job_id} is {j['status']}; only a running or queued job can be paused"
        if j["status"] == "validating_files":
            return f"Job {job_id} is still validating its files; pause it once it is queued"
        return None

    return _stop(svc, job, tenant, "pause", refusal, ("queued",), status="paused")


@router.post("/v1/fine_tuning/jobs/{job_id}/resume")
def resume(
    job_id: str, job: dict = Depends(own_job), svc: ServiceParts = Depends(parts), tenant: str = Depends(caller)
):
    moved = svc.store.transition(job_id, ("paused",), status="queued")
    if moved is None:
        job = job_of(svc.store, job_id, tenant)
        raise ApiError(
            400, f"Job {job_id} is {job['status']}; only a paused job can be resumed", param="fine_tuning_job_id"
        )
    svc.store.add_event(job_id, "Job resumed; queued to continue from its last checkpoint")
    svc.scheduler.poke()
    return moved


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
def events(
    job_id: str,
    after: str | None = None,
    limit: int = 20,
    job: dict = Depends(own_job),
    svc: ServiceParts = Depends(parts),
):
    data, more = svc.store.events(job_id, after, max(1, min(limit, MAX_PAGE)))
    return {"object": "list", "data": data, "has_more": more}


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
def checkpoints(
    job_id: str,
    after: str | None = None,
    limit: int = 10,
    job: dict = Depends(own_job),
    svc: ServiceParts = Depends(parts),
):
    return page(svc.store.checkpoints(job_id), after, limit)


# --- fine-tuned models -----------------------------------------------------------------------------
@router.delete("/v1/models/{model_id:path}")
def delete_model(model_id: str, svc: ServiceParts = Depends(parts), tenant: str = Depends(caller)):
    found = svc.store.model(model_id)
    if found is None or found["tenant"] != tenant:
        if model_id in svc.scheduler.bases:
            raise ApiError(
                403, f"{model_id} is a base model of this server; only fine-tuned models can be deleted", param="model"
            )
        raise ApiError(404, f"The model `{model_id}` does not exist", param="model", code="model_not_found")
    svc.store.delete_model(model_id)
    svc.catalog.unload(model_id)
    return {"id": model_id, "object": "model", "deleted": True}
