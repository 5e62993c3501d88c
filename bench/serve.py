"""Serving many clients: `tunesmith serve` against llama.cpp's own `llama-server`, side by side.

    .venv/bin/python bench/serve.py [--repeats 3] [--concurrency 1,4,8,16,32] [--per-client 3]

The bundled model (SmolLM2-135M-Instruct) in both: ours from its Hugging Face folder at the
machine's precision (`auto`), llama.cpp's from the same weights exported as an f16 GGUF
(`tunesmith export --format gguf`). Prompts are the quickstart's test split (the dates task);
every reply is 64 tokens (`ignore_eos`, which both servers accept), greedy, streamed to the
unmodified `openai` AsyncOpenAI client with `concurrency` clients at once, each sending
`per-client` requests in turn. Two cases:

- `one`: every request for the base model;
- `mixed`: requests spread in turn over the base and 3 LoRA adapters (rank 16, every linear
  layer, as the service trains them): ours serves all four from one copy of the base in one
  batch; llama-server loads the adapters converted by llama.cpp's own `convert_lora_to_gguf.py`
  and takes each request's adapter in its per-request `lora` field.

llama-server runs with as many parallel slots as clients (`-np`), 512 tokens of context per
slot, 2 threads, restarted for each concurrency; ours runs once, with `--max-rows 32`. Runs
alternate (repeat, case, server, concurrency), `--repeats` times; per configuration the medians
of requests/s, generated tokens/s, latency and time to first token (p50, p95 within a run) and
the server's peak RSS during the run. Writes bench/results/serve-<machine>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from llama_server import converter, llama_server
from llama_server import version as llama_version
from machine import machine, machine_tag, provenance

ROOT = Path(__file__).resolve().parent.parent
TUNESMITH = ROOT / ".venv" / "bin" / "tunesmith"
MODEL = "smollm2-135m-instruct"
ADAPTERS = ("a1", "a2", "a3")
REPLY_TOKENS = 64
SLOT_CONTEXT = 512


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(work: Path) -> dict:
    """The model folder, its f16 GGUF, three LoRA adapters (PEFT folders and llama.cpp's GGUF) and
    the prompts."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.model.resolve import resolve
    from tunesmith.tasks.dates import write_splits

    model_dir = resolve(MODEL).path
    gguf = work / "model-f16.gguf"
    if not gguf.is_file():
        subprocess.run(
            [str(TUNESMITH), "export", MODEL, "--format", "gguf", "--quant", "f16", "--to", str(work / "gguf")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        [made] = (work / "gguf").glob("*.gguf")
        made.rename(gguf)
    adapters = {}
    for i, name in enumerate(ADAPTERS):
        folder, lora_gguf = work / name, work / f"{name}.gguf"
        if not (folder / "adapter_config.json").is_file():
            torch.manual_seed(i)
            peft = get_peft_model(
                AutoModelForCausalLM.from_pretrained(model_dir),
                LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
            )
            for module in peft.modules():  # a trained adapter's size of change (PEFT starts B at zero)
                if hasattr(module, "lora_B"):
                    for b in module.lora_B.values():
                        torch.nn.init.normal_(b.weight, std=0.01)
            peft.save_pretrained(folder)
        if not lora_gguf.is_file():
            subprocess.run(
                [
                    sys.executable,
                    str(converter()),
                    "--base",
                    str(model_dir),
                    "--outtype",
                    "f16",
                    "--outfile",
                    str(lora_gguf),
                    str(folder),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        adapters[name] = {"peft": folder, "gguf": lora_gguf}
    splits = write_splits(work / "data", n_test=200)
    prompts = [
        [m for m in json.loads(line)["messages"] if m["role"] != "assistant"]
        for line in splits["test"].read_text().splitlines()
    ]
    return {"model_dir": model_dir, "gguf": gguf, "adapters": adapters, "prompts": prompts}


class Server:
    """A server process, its URL and a sampler of its peak RSS (with its children)."""

    def __init__(self, argv: list[str], url: str, ready_marker: str | None, env: dict | None = None):
        import psutil

        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        self.url, self.ps = url, psutil.Process(self.proc.pid)
        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited: {self.proc.stdout.read()[-2000:]}")
            if ready_marker is not None:
                line = self.proc.stdout.readline()
                if ready_marker in line:
                    self.url = line.split(" at ")[1].split()[0]
                    break
            elif self._health():
                break
            if time.time() > deadline:
                raise RuntimeError(f"{argv[0]} did not start")
            time.sleep(0.2)
        self.tail: list[str] = []  # its last lines of output (kept for a failure's message)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.tail = (self.tail + [line.rstrip()])[-40:]

    def _health(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url.removesuffix("/v1") + "/health", timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def rss(self) -> int:
        import psutil

        try:
            return self.ps.memory_info().rss + sum(c.memory_info().rss for c in self.ps.children(recursive=True))
        except psutil.Error:
            return 0

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def ours(prep: dict) -> Server:
    argv = [
        str(TUNESMITH),
        "serve",
        MODEL,
        "--port",
        "0",
        "--max-rows",
        "32",
        "--max-queue",
        "512",
        "--max-tokens",
        str(REPLY_TOKENS),
    ]
    for name, files in prep["adapters"].items():
        argv += ["--adapter", f"{name}={files['peft']}"]
    return Server(argv, "", "serving ")


def theirs(prep: dict, slots: int, mixed: bool) -> Server:
    port = free_port()
    argv = [
        str(llama_server()),
        "-m",
        str(prep["gguf"]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(slots),
        "-c",
        str(slots * SLOT_CONTEXT),
        "-t",
        str(os.cpu_count() or 2),
        "--no-webui",
    ]
    if mixed:
        for files in prep["adapters"].values():
            argv += ["--lora", str(files["gguf"])]
        argv.append("--lora-init-without-apply")
    return Server(argv, f"http://127.0.0.1:{port}/v1", None)


def request_for(server: str, case: str, i: int) -> tuple[str, dict]:
    """The model name and extra body of request i: in the mixed case, the base and each adapter in turn."""
    which = i % (len(ADAPTERS) + 1) if case == "mixed" else 0
    if server == "tunesmith":
        return (MODEL if which == 0 else ADAPTERS[which - 1]), {"ignore_eos": True}
    lora = (
        [{"id": k, "scale": 1.0 if k == which - 1 else 0.0} for k in range(len(ADAPTERS))] if case == "mixed" else None
    )
    return MODEL, {"ignore_eos": True, **({"lora": lora} if lora else {})}


async def load(url: str, server: str, case: str, prompts: list, concurrency: int, per_client: int) -> list[dict]:
    import httpx2  # the openai client's HTTP library
    import openai
    from openai import AsyncOpenAI

    # a new connection per request: no kept-alive connection that the server has meanwhile closed
    # (llama-server closes idle ones after 5 s, as the client's pool may reuse them)
    http = openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_keepalive_connections=0))
    client = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=900, http_client=http)
    results, counter = [], iter(range(concurrency * per_client))

    async def worker():
        for i in counter:
            model, extra = request_for(server, case, i)
            t0 = time.perf_counter()
            first, tokens = None, 0
            stream = await client.chat.completions.create(
                model=model,
                messages=prompts[i % len(prompts)],
                temperature=0,
                max_tokens=REPLY_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra,
            )
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            end = time.perf_counter()
            results.append({"latency": end - t0, "ttft": (first or end) - t0, "tokens": tokens})

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(srv: Server, server: str, case: str, prompts: list, concurrency: int, per_client: int) -> dict:
    peak, stop = [srv.rss()], threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(srv.rss())
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    results = asyncio.run(load(srv.url, server, case, prompts, concurrency, per_client))
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    latencies, ttfts = [r["latency"] for r in results], [r["ttft"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    assert all(r["tokens"] == REPLY_TOKENS for r in results), [r["tokens"] for r in results]
    return {
        "requests": len(results),
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "tokens_per_s": tokens / wall,
        "latency_p50": percentile(latencies, 0.5),
        "latency_p95": percentile(latencies, 0.95),
        "ttft_p50": percentile(ttfts, 0.5),
        "ttft_p95": percentile(ttfts, 0.95),
        "peak_rss_mb": max(peak) / 2**20,
    }


METRICS = ("requests_per_s", "tokens_per_s", "latency_p50", "latency_p95", "ttft_p50", "ttft_p95", "peak_rss_mb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4,8,16,32")
    parser.add_argument("--per-client", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "tunesmith-bench" / "serve")
    parser.add_argument(
        "--out",
        type=Path,
        help="results file (default: bench/results/serve-<machine>.json for a "
        "full run; a run without 1 and 8 clients or with fewer than 3 repeats writes under --work)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    full = {1, 8} <= set(levels) and args.repeats >= 3
    args.work.mkdir(parents=True, exist_ok=True)
    prep = prepare(args.work)
    prompts = prep["prompts"]
    runs = []
    mine = ours(prep)
    try:
        for repeat in range(args.repeats):
            for case in ("one", "mixed"):
                measure(mine, "tunesmith", case, prompts, 2, 1)  # warm-up
                for server in ("tunesmith", "llama.cpp"):
                    for c in levels:
                        srv = mine if server == "tunesmith" else theirs(prep, c, case == "mixed")
                        try:
                            if server == "llama.cpp":
                                measure(srv, server, case, prompts, min(c, 2), 1)  # warm-up
                            result = measure(srv, server, case, prompts, c, args.per_client)
                        except Exception:
                            print("\n".join(srv.tail), file=sys.stderr)  # what the server said last
                            raise
                        finally:
                            if srv is not mine:
                                srv.stop()
                        runs.append({"repeat": repeat, "case": case, "server": server, "concurrency": c, **result})
                        print(json.dumps(runs[-1]), flush=True)
    finally:
        mine.stop()
    medians: dict = {}
    for r in runs:
        medians.setdefault(r["server"], {}).setdefault(r["case"], {}).setdefault(str(r["concurrency"]), []).append(r)
    for cases in medians.values():
        for by_c in cases.values():
            for c, rs in by_c.items():
                by_c[c] = {m: statistics.median(x[m] for x in rs) for m in METRICS}
    ours_one = medians["tunesmith"]["one"]
    goals = {
        "throughput_8_vs_1": ours_one["8"]["requests_per_s"] / ours_one["1"]["requests_per_s"]
        if "8" in ours_one
        else None,
        "mixed_vs_llama_cpp": {
            c: medians["tunesmith"]["mixed"][c]["tokens_per_s"] / medians["llama.cpp"]["mixed"][c]["tokens_per_s"]
            for c in medians["tunesmith"]["mixed"]
        },
        "p95_8_vs_single": ours_one["8"]["latency_p95"] / ours_one["1"]["latency_p50"] if "8" in ours_one else None,
    }
    out = args.out or (ROOT / "bench" / "results" if full else args.work) / f"serve-{machine_tag()}.json"
    out.write_text(
        json.dumps(
            {
                "provenance": provenance(),
                "machine": machine(),
                "llama_cpp": llama_version(),
                "settings": {
                    "model": MODEL,
                    "reply_tokens": REPLY_TOKENS,
                    "levels": levels,
                    "per_client": args.per_client,
                    "repeats": args.repeats,
                    "adapters": len(ADAPTERS),
                    "slot_context": SLOT_CONTEXT,
                },
                "medians": medians,
                "goals": goals,
                "runs": runs,
            },
            indent=1,
        )
        + "\n"
    )
    print(json.dumps(goals, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
