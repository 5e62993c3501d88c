"""The Tinker API's training runs on disk, under `--home`/tinker: what survives a restart.

    tinker/<model_id>/model.json              the model as created (base, LoRA rank, trained parts) and its tenant
    tinker/<model_id>/weights/<name>/         save_state: weights, Adam state, step (the engine's checkpoint)
    tinker/<model_id>/sampler_weights/<name>/ save_weights_for_sampler: an adapter folder (or a whole model)

A checkpoint is named to the client by its path `tinker://<model_id>/<weights|sampler_weights>/<name>`,
and only its tenant can read it.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tunesmith import atomic
from tunesmith.errors import UserError

KINDS = {"weights": "training", "sampler_weights": "sampler"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,200}$")


@dataclass
class Checkpoint:
    model_id: str
    kind: str  # weights | sampler_weights
    name: str
    folder: Path

    @property
    def path(self) -> str:
        return f"tinker://{self.model_id}/{self.kind}/{self.name}"


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise UserError(f"checkpoint name {name!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    return name


class TinkerRuns:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def folder(self, model_id: str) -> Path:
        if not MODEL_ID.match(model_id or "") or ".." in model_id:
            raise UserError(f"model_id {model_id!r}: not a model id this server gave out")
        return self.root / model_id

    def create(self, model_id: str, tenant: str, record: dict) -> None:
        folder = self.folder(model_id)
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_text(
            folder / "model.json", json.dumps({**record, "model_id": model_id, "tenant": tenant, "created": _now()})
        )

    def record(self, model_id: str, tenant: str) -> dict | None:
        """The model's record, if it exists and belongs to `tenant`."""
        try:
            found = json.loads((self.folder(model_id) / "model.json").read_text())
        except (OSError, ValueError, UserError):
            return None
        return found if found.get("tenant") == tenant else None

    def owned(self, model_id: str, tenant: str) -> dict:
        """The record of a model `tenant` owns (else a LookupError: no such model)."""
        found = self.record(model_id, tenant)
        if found is None:
            raise LookupError(f"model {model_id}: no such model")
        return found

    def parse(self, path: str, tenant: str, kind: str | None = None) -> Checkpoint:
        """The checkpoint a tinker:// path names, if `tenant` may read it (else a UserError)."""
        if not path.startswith("tinker://") or len(path[9:].split("/")) != 3:
            raise UserError(f"{path!r}: not a checkpoint path (tinker://<model_id>/<weights|sampler_weights>/<name>)")
        model_id, found_kind, name = path[9:].split("/")
        if found_kind not in KINDS or (kind is not None and found_kind != kind):
            wanted = kind or " or ".join(KINDS)
            raise UserError(f"{path}: not a {wanted} checkpoint")
        if self.record(model_id, tenant) is None:
            raise UserError(f"{path}: no such checkpoint")
        return Checkpoint(model_id, found_kind, check_name(name), self.folder(model_id) / found_kind / name)

    def new(self, model_id: str, kind: str, name: str, overwrite: bool = False) -> Checkpoint:
        cp = Checkpoint(model_id, kind, check_name(name), self.folder(model_id) / kind / name)
        if cp.folder.exists():
            if not overwrite:
                raise UserError(f"{cp.path} exists; save under another name or with overwrite")
            shutil.rmtree(cp.folder)
        return cp

    def checkpoints(self, model_id: str) -> list[dict]:
        """Every checkpoint of a run, oldest first, as the API lists them."""
        out = []
        for kind, label in KINDS.items():
            for folder in (self.folder(model_id) / kind).glob("*"):
                if folder.is_dir() and NAME.match(folder.name):
                    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                    out.append(
                        {
                            "checkpoint_id": f"{kind}/{folder.name}",
                            "checkpoint_type": label,
                            "time": _iso(folder.stat().st_mtime),
                            "tinker_path": Checkpoint(model_id, kind, folder.name, folder).path,
                            "size_bytes": size,
                            "public": False,
                        }
                    )
        return sorted(out, key=lambda c: c["time"])

    def runs(self, tenant: str) -> list[dict]:
        found = []
        for model_file in self.root.glob("*/model.json"):
            try:
                record = json.loads(model_file.read_text())
            except (OSError, ValueError):
                continue
            if record.get("tenant") == tenant:
                found.append(record)
        return sorted(found, key=lambda r: r.get("created", ""))


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
