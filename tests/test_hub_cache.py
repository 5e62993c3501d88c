"""A hub model id already in the local Hugging Face cache trains offline, with no network call:
the cache is read first, and a download is tried only for what it does not hold."""

from __future__ import annotations

import json
import shutil
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

from helpers import cli_env, write_config

REVISION = "0123456789abcdef0123456789abcdef01234567"


def cached_hub_model(cache: Path, repo: str, source: Path) -> None:
    """`source`'s files laid out as huggingface_hub caches a download of `repo` at `REVISION`."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(REVISION)
    shutil.copytree(source, root / "snapshots" / REVISION)


class CountingHub(socketserver.ThreadingTCPServer):
    """A stand-in hub endpoint that answers nothing and counts who tried to reach it."""

    allow_reuse_address = True

    def __init__(self):
        self.connections = 0
        super().__init__(("127.0.0.1", 0), self.Handler)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            self.server.connections += 1


def test_a_cached_hub_id_trains_with_no_network_call(tmp_path, tiny_model_dir, date_data):
    cache = tmp_path / "hf-cache"
    cached_hub_model(cache, "tiny-org/tiny-llama", tiny_model_dir)
    config = write_config(
        tmp_path / "run.yaml", "tiny-org/tiny-llama", date_data, tmp_path / "runs", train={"max_steps": 2}
    )
    env = cli_env(tmp_path)
    env.pop("HF_HUB_OFFLINE")  # not told to stay offline: it must find the cache on its own
    hub = CountingHub()
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=f"http://127.0.0.1:{hub.server_address[1]}")
    t0 = time.time()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tunesmith", "train", str(config), "--quiet"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=600,
        )
    finally:
        hub.shutdown()
        hub.server_close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert hub.connections == 0, f"{hub.connections} connections to the hub endpoint"
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2
    saved = json.loads((Path(summary["final"]) / "adapter_config.json").read_text())
    assert Path(saved["base_model_name_or_path"]) == cache / "models--tiny-org--tiny-llama" / "snapshots" / REVISION
    assert time.time() - t0 < 300
