"""Commands that use a model: export, generate, chat, label, serve."""

from __future__ import annotations

import json
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
from tunesmith.export import FORMATS as EXPORT_FORMATS
from tunesmith.export import GGUF_QUANTS


@app.command()
def export(
    run_or_model: str = typer.Argument(..., help="run directory or model reference"),
    to: Path = typer.Option(..., "--to", help="target folder (must not exist or be empty)"),
    merge: bool = typer.Option(False, "--merge", help="merge a LoRA adapter into the base weights"),
    format: str = typer.Option(
        "hf",
        "--format",
        help=f"{' | '.join(EXPORT_FORMATS)}: a Hugging Face folder, or one file (adapter merged; Llama family)",
    ),
    quant: str = typer.Option("f16", "--quant", help=f"gguf weights: {' | '.join(GGUF_QUANTS)}"),
):
    """Write a run's adapter, or a merged / full model, in Hugging Face layout or as GGUF; with a model card."""
    from tunesmith.export.exporter import export as do_export

    result = do_export(run_or_model, to, merge=merge, format=format, quant=quant)
    print(json.dumps(result, indent=2))


@app.command()
def merge(
    sources: list[str] = typer.Argument(
        ..., help="one run directory (with --alpha), or two or more LoRA adapter runs on one base (with --method)"
    ),
    to: Path = typer.Option(..., "--to", help="target folder (must not exist or be empty)"),
    alpha: float | None = typer.Option(
        None, "--alpha", min=0.0, max=1.0, help="θ₀ + α(θ − θ₀): the run moved α of the way from its base"
    ),
    method: str | None = typer.Option(
        None, "--method", help="linear | task_arithmetic | ties | dare_linear | dare_ties"
    ),
    weights: str | None = typer.Option(None, "--weights", help="comma-separated, one per adapter (default: 1 each)"),
    density: float | None = typer.Option(None, "--density", help="ties, dare_*: share of each update's entries kept"),
    seed: int = typer.Option(0, help="dare_*: seed of the random drop"),
):
    """Make a model from trained weights without training: a run interpolated towards its base
    (--alpha), or adapters merged into one (--method), a folder plain PEFT loads."""
    from tunesmith.export.weight_space import merge_adapters, write_interpolated

    if (alpha is None) == (method is None):
        raise UserError("merge: give --alpha A with one run, or --method M with two or more adapter runs")
    if alpha is not None:
        if len(sources) != 1:
            raise UserError("merge --alpha: give one run directory")
        print(json.dumps(write_interpolated(sources[0], alpha, to), indent=2))
        return
    try:
        parsed = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise UserError(f"--weights {weights!r}: expected comma-separated numbers, e.g. 1,0.5") from None
    assert method is not None  # --alpha or --method, checked above
    print(json.dumps(merge_adapters(sources, method, to, parsed, density, seed), indent=2))


@app.command()
def generate(
    model: str = typer.Argument(..., help="run directory or model reference"),
    prompt: str = typer.Option(..., "--prompt", help="user message"),
    system: str | None = typer.Option(None, help="system message"),
    max_new_tokens: int = typer.Option(256, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    top_k: int = typer.Option(0, min=0),
    seed: int = typer.Option(0),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    tools: Path | None = typer.Option(
        None,
        "--tools",
        help="a JSON file of OpenAI tools: rendered as in training; calls in the reply are printed as JSON",
    ),
):
    """Answer one prompt with the model's chat template."""
    import torch

    from tunesmith.data.tool_format import parse_reply
    from tunesmith.eval.generate import Sampling, generate_batch
    from tunesmith.model.load import load_for_inference
    from tunesmith.runtime.precision import inference_dtype

    check_precision(precision)
    specs = read_tools(tools)
    torch.manual_seed(seed)
    m, tok = load_for_inference(model, dtype=inference_dtype(precision))
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    reply = generate_batch(m, tok, [messages], Sampling(max_new_tokens, temperature, top_p, top_k), [specs])[0]
    read = parse_reply(reply, {t["function"]["name"] for t in specs}) if specs else None
    if read is not None and read.calls:
        if read.content:
            print(read.content)
        for call in read.calls:
            print(
                json.dumps({"name": call["function"]["name"], "arguments": json.loads(call["function"]["arguments"])})
            )
    else:
        print(reply)


@app.command()
def chat(
    model: str = typer.Argument(..., help="run directory or model reference"),
    system: str | None = typer.Option(None, help="system message"),
    max_new_tokens: int = typer.Option(512, min=1),
    temperature: float = typer.Option(0.7, min=0.0, help="0 = greedy"),
    top_p: float = typer.Option(0.9, min=0.0, max=1.0),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    tools: Path | None = typer.Option(
        None, "--tools", help="a JSON file of OpenAI tools: rendered as in training; you give each call's result"
    ),
):
    """Talk to a model; replies stream token by token. /reset clears the history, /exit leaves."""
    from tunesmith.chat_session import chat_loop
    from tunesmith.eval.generate import Sampling
    from tunesmith.model.load import load_for_inference
    from tunesmith.runtime.precision import inference_dtype

    check_precision(precision)
    specs = read_tools(tools)
    m, tok = load_for_inference(model, dtype=inference_dtype(precision))
    chat_loop(m, tok, Sampling(max_new_tokens, temperature, top_p), system=system, console=err, tools=specs)


def read_tools(path: Path | None) -> list[dict] | None:
    """A `--tools` file: OpenAI's tools as JSON, checked (one line naming the file otherwise)."""
    from tunesmith.data.tool_calls import check_tools

    if path is None:
        return None
    try:
        return check_tools(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValueError) as e:
        raise UserError(f"{path}: {e}") from None


@app.command()
def label(
    model: str = typer.Option(..., "--model", help="run directory or model reference that writes the replies"),
    prompts: Path = typer.Option(
        ..., "--prompts", help="prompts to judge (prompt records, or chat data: the part before its last reply)"
    ),
    out: Path = typer.Option(..., "--out", help="preference JSONL, appended to; a restart skips prompts judged there"),
    port: int = typer.Option(8765, min=0, max=65535, help="port on 127.0.0.1 (0: any free port)"),
    max_new_tokens: int = typer.Option(128, min=1),
    temperature: float = typer.Option(0.8, min=0.0, help="sampling temperature of both replies"),
    top_p: float = typer.Option(0.95, min=0.0, max=1.0),
    seed: int = typer.Option(0),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
):
    """Collect human preferences on a local web page: two sampled replies per prompt, pick A, B, tie
    or both bad, optionally write a better one. Served on loopback only."""
    from tunesmith.label.app import serve
    from tunesmith.label.session import LabelSession
    from tunesmith.model.load import load_for_inference
    from tunesmith.runtime.precision import inference_dtype

    check_precision(precision)
    m, tok = load_for_inference(model, dtype=inference_dtype(precision))
    session = LabelSession(
        m, tok, prompts, out, model, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    progress = session.progress()

    def ready(url: str) -> None:
        print(
            f"labelling page: {url}  ({progress['judged']} of {progress['total']} prompts judged; "
            f"writing {out}; Ctrl-C stops)",
            flush=True,
        )

    serve(session, port, on_ready=ready)


@app.command()
def serve(
    model: str = typer.Argument(
        ..., help="run directory or model reference: the base (and its adapter, for an adapter run)"
    ),
    adapter: list[str] = typer.Option(
        [],
        "--adapter",
        help="NAME=PATH: serve another adapter (run directory or adapter "
        "folder) over the same base, selected by model=NAME (repeatable)",
    ),
    host: str = typer.Option("127.0.0.1", help="address to listen on (loopback by default: this machine only)"),
    port: int = typer.Option(8000, min=0, max=65535, help="port (0: any free port)"),
    api_key_env: str | None = typer.Option(
        None,
        "--api-key-env",
        help="environment variable holding the key clients must send as 'Authorization: Bearer KEY'",
    ),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1, help="the most tokens one reply may ask for"),
    max_queue: int = typer.Option(
        DEFAULT_MAX_QUEUE, "--max-queue", min=1, help="requests running or waiting; more get 429"
    ),
    kv_budget_mb: float | None = typer.Option(None, "--kv-budget-mb", min=1, help=KV_BUDGET_HELP),
    max_rows: int = typer.Option(DEFAULT_MAX_ROWS, "--max-rows", min=1, help=MAX_ROWS_HELP),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
):
    """Serve the model and its adapters with the OpenAI API: /v1/models, /v1/chat/completions, /v1/completions."""
    from tunesmith.runtime.precision import inference_dtype
    from tunesmith.serve import api_key_from, is_loopback
    from tunesmith.serve import serve as run_server
    from tunesmith.serve.app import build_app
    from tunesmith.serve.models import load_served, parse_adapter_option

    check_precision(precision)
    key = api_key_from(api_key_env)
    named = [parse_adapter_option(a) for a in adapter]
    served = load_served(model, named, dtype=inference_dtype(precision), kv_budget_mb=kv_budget_mb, max_rows=max_rows)
    if not is_loopback(host) and key is None:
        err.print(
            f"[yellow]warning: listening on {host} without --api-key-env: anyone who can reach this port "
            "can use the model[/yellow]"
        )

    def ready(url: str) -> None:
        print(f"serving {', '.join(served.ids)} at {url}  (Ctrl-C stops)", flush=True)

    run_server(build_app(served, api_key=key, max_tokens=max_tokens, max_queue=max_queue), host, port, on_ready=ready)
