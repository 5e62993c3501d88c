"""llama.cpp's own HTTP server for the serving benchmark, built once per machine from the llama.cpp
sources inside llama-cpp-python's source distribution (the same sources the tests build
llama-cpp-python from), with this machine's CPU features (GGML_NATIVE), no curl.

    .venv/bin/python bench/llama_server.py   # builds (minutes) and prints the binary's path

`converter()` is llama.cpp's own `convert_lora_to_gguf.py` from the same sources: PEFT LoRA
adapters to the GGUF adapters `llama-server --lora` loads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
ROOT = Path.home() / ".cache" / "tunesmith-bench" / "llama-cpp-0.3.36"


def sources() -> Path:
    """llama.cpp's source tree (unpacked once from the sdist)."""
    tree = ROOT / "src"
    if (tree / "CMakeLists.txt").is_file():
        return tree
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "sdist.tar.gz"  # the file itself (pip download would build its metadata first)
        name, number = LLAMA_CPP_PYTHON.split("==")
        index = urllib.request.Request(
            f"https://pypi.org/simple/{name}/",  # the index's JSON form (PEP 691)
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
        )
        with urllib.request.urlopen(index, timeout=60) as r:
            wanted = f"{name.replace('-', '_')}-{number}.tar.gz"
            [url] = [f["url"] for f in json.load(r)["files"] if f["filename"] == wanted]
        with urllib.request.urlopen(url, timeout=600) as r, archive.open("wb") as f:
            shutil.copyfileobj(r, f)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        [unpacked] = [p for p in Path(tmp).iterdir() if p.is_dir()]
        ROOT.mkdir(parents=True, exist_ok=True)
        if tree.exists():
            shutil.rmtree(tree)
        shutil.copytree(unpacked / "vendor" / "llama.cpp", tree)
    return tree


def llama_server() -> Path:
    """The llama-server binary, built where missing."""
    binary = ROOT / "build" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    tree = sources()
    build = ROOT / "build"
    subprocess.run(
        [
            "cmake",
            "-S",
            str(tree),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DGGML_NATIVE=ON",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_BUILD_TOOLS=ON",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return binary


def converter() -> Path:
    return sources() / "convert_lora_to_gguf.py"


def version() -> str:
    done = subprocess.run([str(llama_server()), "--version"], capture_output=True, text=True)
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "unknown"


if __name__ == "__main__":
    print(llama_server())
    print(version())
