"""The labelling page: a small FastAPI app over a LabelSession, served on loopback only.

GET  /             the page (label/page.html)
GET  /api/next     {"id", "prompt": [messages], "a", "b", "progress"} or {"finished": true, "progress"}
POST /api/judge    {"id", "choice": "a"|"b"|"tie"|"both_bad", "edit"?: text} -> {"saved": n, "progress"}
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from tunesmith.errors import UserError
from tunesmith.label.session import LabelSession
from tunesmith.serve import LOOPBACK

PAGE = Path(__file__).with_name("page.html")
MAX_EDIT_CHARS = 20_000


class Judgement(BaseModel):
    id: int
    choice: str
    edit: str | None = Field(None, max_length=MAX_EDIT_CHARS)


def build_app(session: LabelSession):
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="tunesmith label", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/next")
    def next_pair():
        pair = session.next_pair()
        if pair is None:
            return {"finished": True, "progress": session.progress()}
        return {"id": pair.id, "prompt": pair.prompt, "a": pair.a, "b": pair.b, "progress": session.progress()}

    @app.post("/api/judge")
    def judge(j: Judgement):
        try:
            records = session.judge(j.id, j.choice, j.edit)
        except UserError as e:
            return JSONResponse({"error": str(e)}, status_code=409 if "not the one on show" in str(e) else 400)
        return {"saved": len(records), "progress": session.progress()}

    return app


def serve(session: LabelSession, port: int, on_ready=None) -> None:
    """Serve until interrupted; `on_ready(url)` once the socket listens. On 127.0.0.1 only, never
    another interface: the page shows model output and writes a file, for the person at this machine."""
    from tunesmith.serve import serve as serve_app

    serve_app(build_app(session), LOOPBACK, port, on_ready=on_ready, path="/")
