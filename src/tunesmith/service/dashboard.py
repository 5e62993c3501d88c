"""The dashboard: one page (dashboard.html: no build step, nothing from a CDN) over the same API
the client uses, plus what only a page needs:

  GET /                                        the page
  GET /v1/fine_tuning/jobs/{id}/stream         the job's events as server-sent events, from the first,
                                               live until the job has finished
  GET /v1/fine_tuning/jobs/{id}/report         the run's report, its plots inlined (one self-contained page)
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunesmith.serve.protocol import ApiError
from tunesmith.service.api import ServiceParts, own_job, parts
from tunesmith.service.store import FINISHED

PAGE = Path(__file__).with_name("dashboard.html")
POLL_S = 0.5
PLOT = re.compile(r"""src='(plots/[A-Za-z0-9_.-]+\.png)'""")


def inline_plots(html: str, run_dir: Path) -> str:
    """The report's `plots/*.png` images as data URIs: the page is then whole on its own."""

    def data_uri(match: re.Match) -> str:
        path = run_dir / match.group(1)
        if not path.is_file():
            return match.group(0)
        return f"src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'"

    return PLOT.sub(data_uri, html)


router = APIRouter()


def add_dashboard(app, runs: Path) -> None:
    """The page and its two routes, over the fine-tuning routes' parts (add_routes first)."""
    app.state.runs = runs
    app.include_router(router)


@router.get("/", response_class=HTMLResponse)
def page():
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})


@router.get("/v1/fine_tuning/jobs/{job_id}/stream")
def stream(job_id: str, job: dict = Depends(own_job), svc: ServiceParts = Depends(parts)):
    store = svc.store

    async def events():
        """Polls the store (each read a moment in the thread pool) and waits on the event loop, so an
        open stream holds no thread between polls."""
        seen = 0
        while True:
            fresh = await run_in_threadpool(store.events_since, job_id, seen)
            for seq, event in fresh:
                seen = seq
                yield f"data: {json.dumps(event)}\n\n"
            job = await run_in_threadpool(store.job, job_id)
            if job is None or (job["status"] in FINISHED and not fresh):
                return
            yield ": waiting\n\n"  # a comment line: a client that left is noticed at the next write
            await asyncio.sleep(POLL_S)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/v1/fine_tuning/jobs/{job_id}/report", response_class=HTMLResponse)
def report(job_id: str, request: Request, job: dict = Depends(own_job)):
    path = request.app.state.runs / job_id / "report.html"
    if not path.is_file():
        raise ApiError(
            404, f"{job_id} has no report yet: it is written when the job succeeds", param="fine_tuning_job_id"
        )
    return HTMLResponse(inline_plots(path.read_text(encoding="utf-8"), path.parent))
