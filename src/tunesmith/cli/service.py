"""`tunesmith service`: OpenAI's fine-tuning API (files, jobs, events, checkpoints) and the
inference API over every fine-tune, on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.app import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_ROWS,
    KV_BUDGET_HELP,
    MAX_ROWS_HELP,
    PRECISION_HELP,
    app,
    check_precision,
    err,
)
from tunesmith.errors import UserError
from tunesmith.model.embedded import DEFAULT_ALIAS

# options of `tunesmith service` whose declarations run long, named so that the command reads on a screen
HOME_OPTION = typer.Option(Path("tunesmith-service"), "--home", help="where files, jobs, runs and the database live")

MODEL_OPTION = typer.Option(
    [],
    "--model",
    help=f"a base model jobs may train, as REFERENCE or ID=REFERENCE "
    f"(requests name it ID; repeatable; default {DEFAULT_ALIAS})",
)

WORKERS_OPTION = typer.Option(
    1,
    "--workers",
    min=1,
    help="jobs training at once (each its own process; with --cluster: jobs the cluster holds at once)",
)

API_KEYS_FILE_OPTION = typer.Option(
    None,
    "--api-keys-file",
    help="one key per line, optionally followed by a tenant name; each key sees only its own files, jobs and models",
)

TENANTS_OPTION = typer.Option(
    None,
    "--tenants",
    help="YAML: what each tenant may do beyond training "
    "(code and endpoint graders, their key variables, limits); docs/service.md",
)

CLUSTER_OPTION = typer.Option(
    None,
    "--cluster",
    help="YAML: run jobs on a Slurm or Ray cluster that shares "
    "--home (executor, placement per model and tenant); docs/service.md",
)

PROBE_LIMIT_OPTION = typer.Option(
    60, "--probe-limit", min=0, help="general-QA questions in each job's forgetting probe (0: no probe)"
)

REPLAY_OPTION = typer.Option(
    0.0,
    "--replay",
    min=0.0,
    max=0.9,
    help="share of every job's batches drawn from the "
    "base model's own answers to general prompts (keeps general ability; 0: none)",
)

MAX_QUEUE_OPTION = typer.Option(
    DEFAULT_MAX_QUEUE, "--max-queue", min=1, help="chat and completion requests running or waiting; more get 429"
)


@app.command()
def service(
    host: str = typer.Option("127.0.0.1", help="address to listen on; other than loopback only with --api-keys-file"),
    port: int = typer.Option(8000, min=0, max=65535, help="port (0: any free port)"),
    home: Path = HOME_OPTION,
    model: list[str] = MODEL_OPTION,
    workers: int = WORKERS_OPTION,
    api_keys_file: Path | None = API_KEYS_FILE_OPTION,
    tenants: Path | None = TENANTS_OPTION,
    cluster: Path | None = CLUSTER_OPTION,
    max_upload_mb: int = typer.Option(512, "--max-upload-mb", min=1, help="the largest file an upload may be"),
    probe_limit: int = PROBE_LIMIT_OPTION,
    replay: float = REPLAY_OPTION,
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1, help="the most tokens one reply may ask for"),
    max_queue: int = MAX_QUEUE_OPTION,
    kv_budget_mb: float | None = typer.Option(None, "--kv-budget-mb", min=1, help=KV_BUDGET_HELP + " (per base model)"),
    max_rows: int = typer.Option(DEFAULT_MAX_ROWS, "--max-rows", min=1, help=MAX_ROWS_HELP),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
):
    """Serve OpenAI's fine-tuning API and chat with the results: point the openai client's base_url here."""
    from tunesmith.serve import is_loopback
    from tunesmith.serve import serve as run_server
    from tunesmith.service import build_service

    check_precision(precision)
    if not is_loopback(host) and api_keys_file is None:
        raise UserError(
            f"--host {host}: listening beyond this machine needs --api-keys-file (who may train and on what)"
        )
    svc = build_service(
        home,
        model or [DEFAULT_ALIAS],
        workers=workers,
        keys_file=api_keys_file,
        max_upload=max_upload_mb << 20,
        probe_limit=probe_limit,
        precision=precision,
        max_tokens=max_tokens,
        max_queue=max_queue,
        replay=replay,
        tenants_file=tenants,
        cluster_file=cluster,
        kv_budget_mb=kv_budget_mb,
        max_rows=max_rows,
    )

    def ready(url: str) -> None:
        print(
            f"tunesmith service at {url} (dashboard: {url.removesuffix('/v1')}/)  home {home}  (Ctrl-C stops)",
            flush=True,
        )

    svc.scheduler.start()
    try:
        run_server(svc.app, host, port, on_ready=ready)
    finally:
        err.print(
            "stopping: running jobs write a checkpoint and resume when the service starts again"
            if svc.scheduler.executor.name == "local"
            else f"stopping: jobs on the {svc.scheduler.executor.name} cluster go on; they are followed again at the "
            "next start"
        )
        svc.scheduler.stop()
