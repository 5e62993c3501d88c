"""`tunesmith serve`: a tuned model and its adapters behind the OpenAI API (FastAPI + uvicorn)."""

from __future__ import annotations

import ipaddress
import os
import socket

from tunesmith.errors import UserError

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def api_key_from(variable: str | None) -> str | None:
    """The key clients must send (`Authorization: Bearer KEY`), read from an environment variable so
    it never appears in a process list or shell history."""
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key.strip():
        raise UserError(f"--api-key-env {variable}: the environment variable is not set or empty")
    return key.strip()


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening socket on `host` (port 0: any free one), bound before uvicorn starts so the
    address is known, and taken, first."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=128)
    except (OSError, ValueError) as e:
        raise UserError(f"--port {port}: cannot listen on {host} ({getattr(e, 'strerror', None) or e})") from None


def serve(app, host: str, port: int, on_ready=None, path: str = "/v1") -> None:
    """Serve the FastAPI `app` until interrupted; `on_ready(url)` once the socket listens, with
    `path` (where clients start) in the URL."""
    import uvicorn

    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}{path}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    if on_ready is not None:
        on_ready(url)
    server.run(sockets=[sock])
