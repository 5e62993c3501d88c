"""The service's state: one SQLite database (WAL) under --home, shared by the server's threads.

Objects are kept as the JSON OpenAI's API returns (files, jobs, events, checkpoints, models), next
to the columns the service looks them up by: the owner (tenant), status, order of creation. Every
write is one transaction, so a server killed at any moment leaves each object as it was before or
after the write, never between.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (key_hash TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    tenant TEXT NOT NULL, sha256 TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    tenant TEXT NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL, request TEXT NOT NULL,
    control TEXT, handle TEXT, restarts INTEGER, examples INTEGER, final_step INTEGER);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL, step INTEGER NOT NULL, model TEXT UNIQUE NOT NULL, path TEXT NOT NULL, body TEXT NOT NULL,
    UNIQUE (job_id, step));
CREATE TABLE IF NOT EXISTS models (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, base TEXT NOT NULL,
    path TEXT NOT NULL, job_id TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
"""

ADDED_COLUMNS = (("handle", "TEXT"), ("restarts", "INTEGER"))
ACTIVE = ("validating_files", "queued", "running")  # a job in one of these still has work to do
FINISHED = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    """An OpenAI-style id: `file-`, `ftjob-`, `ftevent-`, `ftckpt-` and 24 random letters and digits."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(24))


def now() -> int:
    return int(time.time())


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
        for column, kind in ADDED_COLUMNS:  # a database of an earlier version gains what this one keeps
            if column not in columns:
                self.db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        self.lock = threading.RLock()

    def _write(self, sql: str, args=()) -> sqlite3.Cursor:
        with self.lock:
            return self.db.execute(sql, args)

    def _rows(self, sql: str, args=()) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    # tenants: only the hashes of their keys are stored
    def set_tenants(self, hashes: dict[str, str]) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM tenants")
            self.db.executemany("INSERT INTO tenants VALUES (?, ?)", list(hashes.items()))
            self.db.execute("COMMIT")

    def tenant_of(self, key_hash: str) -> str | None:
        rows = self._rows("SELECT name FROM tenants WHERE key_hash = ?", (key_hash,))
        return rows[0][0] if rows else None

    # files
    def add_file(self, tenant: str, sha256: str, body: dict) -> dict:
        self._write(
            "INSERT INTO files (id, tenant, sha256, body) VALUES (?, ?, ?, ?)",
            (body["id"], tenant, sha256, json.dumps(body)),
        )
        return body

    def file(self, file_id: str, tenant: str | None) -> tuple[dict, str] | None:
        """A file's object and content hash, if it is `tenant`'s (any tenant's for None)."""
        rows = self._rows("SELECT body, sha256, tenant FROM files WHERE id = ?", (file_id,))
        if not rows or (tenant is not None and rows[0][2] != tenant):
            return None
        return json.loads(rows[0][0]), rows[0][1]

    def files(self, tenant: str, purpose: str | None = None) -> list[dict]:
        found = [
            json.loads(b) for (b,) in self._rows("SELECT body FROM files WHERE tenant = ? ORDER BY seq DESC", (tenant,))
        ]
        return [f for f in found if purpose is None or f["purpose"] == purpose]

    def delete_file(self, file_id: str) -> str | None:
        """Forget a file; its content hash when no other file still holds the same content."""
        with self.lock:
            rows = self.db.execute("SELECT sha256 FROM files WHERE id = ?", (file_id,)).fetchall()
            if not rows:
                return None
            self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))
            left = self.db.execute("SELECT COUNT(*) FROM files WHERE sha256 = ?", (rows[0][0],)).fetchone()[0]
        return None if left else rows[0][0]

    # jobs
    def add_job(self, tenant: str, body: dict, request: dict) -> dict:
        """A new job: its API object and the request it came from (its hyperparameters as asked)."""
        self._write(
            "INSERT INTO jobs (id, tenant, status, body, request) VALUES (?, ?, ?, ?, ?)",
            (body["id"], tenant, body["status"], json.dumps(body), json.dumps(request)),
        )
        return body

    def _job_column(self, job_id: str, column: str):
        rows = self._rows(f"SELECT {column} FROM jobs WHERE id = ?", (job_id,))
        return rows[0][0] if rows else None

    def _set_job_column(self, job_id: str, column: str, value) -> None:
        self._write(f"UPDATE jobs SET {column} = ? WHERE id = ?", (value, job_id))

    def request(self, job_id: str) -> dict:
        return json.loads(self._job_column(job_id, "request"))

    def handle(self, job_id: str) -> str | None:
        """The executor's name for the job's worker (None: none started or it ended)."""
        return self._job_column(job_id, "handle")

    def set_handle(self, job_id: str, handle: str | None) -> None:
        self._set_job_column(job_id, "handle", handle)

    def restarts(self, job_id: str) -> int:
        return self._job_column(job_id, "restarts") or 0

    def count_restart(self, job_id: str) -> None:
        self._write("UPDATE jobs SET restarts = COALESCE(restarts, 0) + 1 WHERE id = ?", (job_id,))

    def example_count(self, job_id: str) -> int | None:
        return self._job_column(job_id, "examples")

    def set_example_count(self, job_id: str, n: int) -> None:
        self._set_job_column(job_id, "examples", n)

    def final_step(self, job_id: str) -> int | None:
        return self._job_column(job_id, "final_step")

    def set_final_step(self, job_id: str, step: int) -> None:
        self._set_job_column(job_id, "final_step", step)

    def job(self, job_id: str, tenant: str | None = None) -> dict | None:
        rows = self._rows("SELECT body, tenant FROM jobs WHERE id = ?", (job_id,))
        if not rows or (tenant is not None and rows[0][1] != tenant):
            return None
        return json.loads(rows[0][0])

    def job_owner(self, job_id: str) -> str | None:
        rows = self._rows("SELECT tenant FROM jobs WHERE id = ?", (job_id,))
        return rows[0][0] if rows else None

    def owner_of(self, job_id: str) -> str:
        """The tenant of a job that exists (KeyError for one that does not)."""
        tenant = self.job_owner(job_id)
        if tenant is None:
            raise KeyError(f"no job {job_id}")
        return tenant

    def existing_job(self, job_id: str) -> dict:
        """A job that exists (KeyError for one that does not)."""
        job = self.job(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        return job

    def jobs(self, tenant: str | None, status: tuple[str, ...] | None = None, oldest_first: bool = False) -> list[dict]:
        sql, args = "SELECT body FROM jobs WHERE 1 = 1", list[object]()
        if tenant is not None:
            sql, args = sql + " AND tenant = ?", args + [tenant]
        if status is not None:
            sql += f" AND status IN ({', '.join('?' * len(status))})"
            args += list(status)
        sql += " ORDER BY seq" + ("" if oldest_first else " DESC")
        return [json.loads(b) for (b,) in self._rows(sql, args)]

    def queue(self) -> list[tuple[str, dict]]:
        """The queued jobs, oldest first, each with its tenant."""
        rows = self._rows("SELECT tenant, body FROM jobs WHERE status = 'queued' ORDER BY seq")
        return [(tenant, json.loads(body)) for tenant, body in rows]

    def stored_bytes(self, tenant: str) -> int:
        """The bytes of the tenant's files (each file counted, as each is listed)."""
        rows = self._rows(
            "SELECT COALESCE(SUM(json_extract(body, '$.bytes')), 0) FROM files WHERE tenant = ?", (tenant,)
        )
        return int(rows[0][0])

    def update_job(self, job_id: str, **fields) -> dict:
        """Set fields of a job's object (one transaction); returns the object as stored."""
        job = self.transition(job_id, None, **fields)
        if job is None:
            raise KeyError(f"no job {job_id}")
        return job

    def transition(self, job_id: str, from_status: tuple[str, ...] | None, **fields) -> dict | None:
        """Set fields of a job (a new `status` among them) only if its status is one of
        `from_status` (None: any) when the transaction runs; the object as stored, or None when it
        was not: the API and the scheduler each move a job only from the state they saw it in."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                row = self.db.execute("SELECT body, status FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None or (from_status is not None and row[1] not in from_status):
                    self.db.execute("ROLLBACK")
                    return None
                body = json.loads(row[0])
                body.update(fields)
                self.db.execute(
                    "UPDATE jobs SET body = ?, status = ? WHERE id = ?", (json.dumps(body), body["status"], job_id)
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return body

    def request_control(self, job_id: str, request: str) -> bool:
        """Ask a running job to cancel or pause; False when the job is not running (any more)."""
        cur = self._write("UPDATE jobs SET control = ? WHERE id = ? AND status = 'running'", (request, job_id))
        return cur.rowcount == 1

    def control(self, job_id: str) -> str | None:
        """What was asked of a running job: 'cancel' or 'pause' (None: keep going)."""
        return self._job_column(job_id, "control")

    def set_control(self, job_id: str, request: str | None) -> None:
        self._set_job_column(job_id, "control", request)

    # events
    def add_event(
        self, job_id: str, message: str, level: str = "info", data: dict | None = None, kind: str = "message"
    ) -> dict:
        body = {
            "object": "fine_tuning.job.event",
            "id": new_id("ftevent-"),
            "created_at": now(),
            "level": level,
            "message": message,
            "data": data or {},
            "type": kind,
        }
        self._write("INSERT INTO events (id, job_id, body) VALUES (?, ?, ?)", (body["id"], job_id, json.dumps(body)))
        return body

    def events(self, job_id: str, after: str | None = None, limit: int = 20) -> tuple[list[dict], bool]:
        """Newest first, as OpenAI lists them; `after` an event id: the ones older than it."""
        sql, args = "SELECT body FROM events WHERE job_id = ?", [job_id]
        if after is not None:
            sql += " AND seq < COALESCE((SELECT seq FROM events WHERE id = ?), -1)"
            args.append(after)
        rows = self._rows(sql + " ORDER BY seq DESC LIMIT ?", args + [limit + 1])
        return [json.loads(b) for (b,) in rows[:limit]], len(rows) > limit

    def last_metrics_step(self, job_id: str) -> int:
        """The last step a metrics event was written for (0: none yet)."""
        rows = self._rows(
            "SELECT MAX(json_extract(body, '$.data.step')) FROM events WHERE job_id = ? "
            "AND json_extract(body, '$.type') = 'metrics'",
            (job_id,),
        )
        return int(rows[0][0] or 0)

    def events_since(self, job_id: str, seq: int) -> list[tuple[int, dict]]:
        """Events after position `seq`, oldest first (what a live view has not seen yet)."""
        rows = self._rows("SELECT seq, body FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, seq))
        return [(s, json.loads(b)) for s, b in rows]

    # checkpoints
    def add_checkpoint(self, job_id: str, step: int, model: str, path: str, metrics: dict) -> dict | None:
        """Record the checkpoint of `step` once (None when it is recorded already)."""
        body = {
            "object": "fine_tuning.job.checkpoint",
            "id": new_id("ftckpt-"),
            "created_at": now(),
            "fine_tuned_model_checkpoint": model,
            "fine_tuning_job_id": job_id,
            "step_number": step,
            "metrics": metrics,
        }
        with self.lock:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO checkpoints (id, job_id, step, model, path, body) VALUES (?, ?, ?, ?, ?, ?)",
                (body["id"], job_id, step, model, path, json.dumps(body)),
            )
        return body if cur.rowcount else None

    def checkpoints(self, job_id: str) -> list[dict]:
        return [
            json.loads(b)
            for (b,) in self._rows("SELECT body FROM checkpoints WHERE job_id = ? ORDER BY step DESC", (job_id,))
        ]

    def drop_checkpoint(self, job_id: str, step: int) -> None:
        self._write("DELETE FROM checkpoints WHERE job_id = ? AND step = ?", (job_id, step))

    # served fine-tuned models: a finished job's and its checkpoints'
    def add_model(self, model_id: str, tenant: str, base: str, path: str, job_id: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)", (model_id, tenant, base, path, job_id, now())
        )

    def model(self, model_id: str) -> dict | None:
        """A fine-tuned model: a job's final model, or one of its checkpoints."""
        rows = self._rows("SELECT id, tenant, base, path, job_id, created_at FROM models WHERE id = ?", (model_id,))
        if rows:
            return dict(zip(("id", "tenant", "base", "path", "job_id", "created_at"), rows[0]))
        rows = self._rows(
            "SELECT c.model, j.tenant, j.body, c.path, c.job_id, c.body FROM checkpoints c "
            "JOIN jobs j ON j.id = c.job_id WHERE c.model = ?",
            (model_id,),
        )
        if not rows:
            return None
        name, tenant, job, path, job_id, ckpt = rows[0]
        return {
            "id": name,
            "tenant": tenant,
            "base": json.loads(job)["model"],
            "path": path,
            "job_id": job_id,
            "created_at": json.loads(ckpt)["created_at"],
        }

    def models(self, tenant: str | None) -> list[dict]:
        rows = self._rows(
            "SELECT id FROM models" + (" WHERE tenant = ?" if tenant is not None else "") + " ORDER BY created_at",
            (tenant,) if tenant is not None else (),
        )
        ckpts = self._rows(
            "SELECT c.model FROM checkpoints c JOIN jobs j ON j.id = c.job_id"
            + (" WHERE j.tenant = ?" if tenant is not None else "")
            + " ORDER BY c.seq",
            (tenant,) if tenant is not None else (),
        )
        return [found for (m,) in rows + ckpts if (found := self.model(m)) is not None]

    def delete_model(self, model_id: str) -> None:
        self._write("DELETE FROM models WHERE id = ?", (model_id,))
        self._write("DELETE FROM checkpoints WHERE model = ?", (model_id,))
