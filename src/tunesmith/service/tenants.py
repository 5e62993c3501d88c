"""Who is calling: the `--api-keys-file` (one key per line, optionally followed by a tenant name).

Only SHA-256 hashes of the keys reach the database; a request's bearer token is hashed and looked
up. Without a keys file every caller is the one tenant `local`, and the service listens on
loopback only (as `tunesmith serve` does without a key)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tunesmith.errors import UserError

LOCAL = "local"
MIN_KEY_LENGTH = 16


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys_file(path: Path) -> dict[str, str]:
    """key hash -> tenant name; one line per key (`KEY [TENANT]`), `#` comments and blank lines
    skipped. A key without a name is its own tenant, named by the start of its hash."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--api-keys-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    hashes: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2:
            raise UserError(f"{path}:{number}: expected KEY or KEY TENANT, got {len(fields)} fields")
        key = fields[0]
        if len(key) < MIN_KEY_LENGTH:
            raise UserError(f"{path}:{number}: a key needs at least {MIN_KEY_LENGTH} characters")
        digest = key_hash(key)
        if digest in hashes:
            raise UserError(f"{path}:{number}: this key is listed twice")
        hashes[digest] = fields[1] if len(fields) == 2 else f"key-{digest[:8]}"
    if not hashes:
        raise UserError(f"--api-keys-file {path}: no keys in it")
    return hashes
