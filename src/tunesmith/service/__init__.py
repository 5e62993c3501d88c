"""`tunesmith service`: OpenAI's fine-tuning API on your own machine, in one server.

The inference server (serve/) plus files, fine-tuning jobs, their events and checkpoints, and the
fine-tuned models served as soon as they exist. State lives under --home: `service.db` (SQLite,
WAL), `files/` (uploads by content hash), `jobs/<id>/` (the job's copy of its data, its run
config, the worker's log) and `runs/<id>/` (each job's tunesmith run directory). Workers run on
this machine, or as jobs of a Slurm or Ray cluster that shares --home (`--cluster`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.serve.models import MODEL_NAME, display_id
from tunesmith.service.catalog import ServiceCatalog
from tunesmith.service.cluster import LOCAL as LOCAL_CLUSTER
from tunesmith.service.cluster import read_cluster
from tunesmith.service.executors import Executor
from tunesmith.service.files import FileStore
from tunesmith.service.policy import LOCAL_POLICY, Policies, read_policies
from tunesmith.service.scheduler import Scheduler
from tunesmith.service.store import Store
from tunesmith.service.tenants import LOCAL, key_hash, read_keys_file

MAX_UPLOAD_BYTES = 512 << 20
MULTIPART_SLACK = 1 << 16  # the form's own bytes around the file


@dataclass
class Service:
    app: object
    scheduler: Scheduler
    store: Store
    catalog: ServiceCatalog


def bases_of(references: list[str]) -> dict[str, str]:
    """Base id (what `model` names in requests) -> model reference. `ID=REFERENCE` serves a model
    under a name of the caller's choosing (a client that knows models by their hub names)."""
    from tunesmith.model.resolve import resolve

    out: dict[str, str] = {}
    for option in references:
        name, reference = served_name(option)
        resolved = resolve(reference)  # a bad reference: one error now, not at the first job
        if resolved.adapter is not None:
            raise UserError(
                f"--model {option}: an adapter run; the service trains on base models (export it "
                "merged first: tunesmith export RUN --to DIR --merge)"
            )
        if name in out:
            raise UserError(f"--model {option}: a second base named {name}")
        out[name] = reference
    return out


def served_name(option: str) -> tuple[str, str]:
    """(the id requests name, the model reference) of one `--model` value: `REFERENCE` or `ID=REFERENCE`."""
    name, sep, reference = option.partition("=")
    if not sep or Path(option).exists():
        return display_id(option), option
    if not MODEL_NAME.match(name) or not reference:
        raise UserError(
            f"--model {option}: expected REFERENCE or ID=REFERENCE (the id may hold letters, digits "
            "and . _ : / -, up to 128)"
        )
    return name, reference


def executor_for(cluster) -> Executor:
    """The executor a `--cluster` file (service/cluster.py's ClusterConfig) names."""
    if cluster.executor == "slurm":
        from tunesmith.service.executors.slurm import SlurmExecutor

        return SlurmExecutor(cluster.python, cluster.placement)
    if cluster.executor == "ray":
        from tunesmith.service.executors.ray_cluster import RayExecutor

        return RayExecutor(cluster.address, cluster.python, cluster.placement)
    from tunesmith.service.executors.local import LocalExecutor

    return LocalExecutor(cluster.python)


def build_service(
    home: Path,
    models: list[str],
    workers: int = 1,
    keys_file: Path | None = None,
    max_upload: int = MAX_UPLOAD_BYTES,
    probe_limit: int = 0,
    precision: str = "auto",
    max_tokens: int = 1024,
    max_queue: int = 128,
    replay: float = 0.0,
    tenants_file: Path | None = None,
    cluster_file: Path | None = None,
    kv_budget_mb: float | None = None,
    max_rows: int = 32,
) -> Service:
    """The app and its scheduler (not started); `precision` for training and serving alike;
    `tenants_file`: what each tenant may do (`service/policy.py`); `cluster_file`: where jobs run
    (`service/cluster.py`; none: on this machine)."""
    from tunesmith.runtime.precision import inference_dtype
    from tunesmith.serve.app import build_app
    from tunesmith.service.api import add_routes
    from tunesmith.service.dashboard import add_dashboard
    from tunesmith.service.tinker.routes import add_tinker_routes
    from tunesmith.service.tinker.server import TinkerServer

    bases = bases_of(models)
    home = home.resolve()  # workers run in their job's folder: every path they are given is absolute
    home.mkdir(parents=True, exist_ok=True)
    store = Store(home / "service.db")
    hashes = read_keys_file(keys_file) if keys_file is not None else {}
    names = set(hashes.values()) if keys_file is not None else {LOCAL}
    if tenants_file is not None:
        policies = read_policies(tenants_file, names)
    else:
        policies = Policies() if keys_file is not None else Policies(default=LOCAL_POLICY)
    if keys_file is not None:
        store.set_tenants(hashes)

        def callers(token: str) -> str | None:
            return store.tenant_of(key_hash(token)) if token else None
    else:
        store.set_tenants({})

        def callers(token: str) -> str | None:
            return LOCAL

    cluster = read_cluster(cluster_file, set(bases), names) if cluster_file is not None else LOCAL_CLUSTER
    files = FileStore(home / "files", store, max_upload)
    catalog = ServiceCatalog(store, bases, inference_dtype(precision), kv_budget_mb=kv_budget_mb, max_rows=max_rows)
    scheduler = Scheduler(
        store,
        files,
        home,
        bases,
        workers=workers,
        probe_limit=probe_limit,
        precision=precision,
        replay=replay,
        policy_of=policies.of,
        executor=executor_for(cluster),
    )
    scheduler.on_removed = catalog.unload
    app = build_app(
        catalog,
        max_tokens=max_tokens,
        max_queue=max_queue,
        callers=callers,
        body_limits={"/v1/files": max_upload + MULTIPART_SLACK, "/api/v1/forward_backward": max_upload},
    )
    add_routes(app, store, files, scheduler, catalog)
    add_dashboard(app, home / "runs")
    add_tinker_routes(app, TinkerServer(home, bases, catalog, store, precision, max_tokens), callers)
    return Service(app, scheduler, store, catalog)
