"""Uploaded files: streamed to disk under a bound, stored once per content (named by SHA-256),
listed per tenant. A file is only ever read as training data, never executed.

An upload is written to a temporary name and renamed into place when whole, so a server killed
mid-upload leaves no file an id could point at."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from tunesmith.service.store import Store, new_id, now

PURPOSES = ("fine-tune",)  # what this server does with a file: train on it
CHUNK = 1 << 20


class TooLarge(Exception):
    pass


class OverQuota(TooLarge):
    """The upload would take the tenant past its `max_stored_mb`."""


class FileStore:
    def __init__(self, root: Path, store: Store, max_bytes: int):
        self.root, self.store, self.max_bytes = root, store, max_bytes
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".upload-*"):  # what a killed upload left
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def save(self, tenant: str, filename: str, purpose: str, stream: BinaryIO, quota: int | None = None) -> dict:
        """Copy the upload to disk, hashing as it goes; TooLarge past `max_bytes`, OverQuota past
        the tenant's `quota` of stored bytes (nothing kept either way)."""
        tmp = self.root / f".upload-{os.getpid()}-{new_id('')}"
        digest, size = hashlib.sha256(), 0
        room = None if quota is None else quota - self.store.stored_bytes(tenant)
        try:
            with tmp.open("wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise TooLarge(f"the file is over this server's limit of {self.max_bytes} bytes")
                    if room is not None and size > room:
                        raise OverQuota(
                            f"the file would take tenant {tenant!r} past its {(quota or 0) >> 20} MB of stored files "
                            f"({max(0, room)} bytes left); delete files first"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            os.replace(tmp, self.path(sha))  # the same content twice: one copy
        finally:
            tmp.unlink(missing_ok=True)
        body = {
            "object": "file",
            "id": new_id("file-"),
            "bytes": size,
            "created_at": now(),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        return self.store.add_file(tenant, sha, body)

    def save_bytes(self, tenant: str, filename: str, purpose: str, data: bytes) -> dict:
        """A file the service writes itself (a job's results), as if uploaded."""
        import io

        return self.save(tenant, filename, purpose, io.BytesIO(data))

    def delete(self, file_id: str) -> None:
        unused = self.store.delete_file(file_id)
        if unused is not None:
            self.path(unused).unlink(missing_ok=True)

    def copy_to(self, sha256: str, target: Path) -> None:
        shutil.copyfile(self.path(sha256), target)
