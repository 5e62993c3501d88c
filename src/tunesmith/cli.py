"""The `tunesmith` command: one Typer app, each command a thin call into the library.

Exit codes: 0 success, 2 bad input (config, data, model reference, arguments), 1 anything else.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, get_args

import typer
from rich.console import Console

from tunesmith.config import METHODS, PRECISIONS, TrainOn
from tunesmith.data.layouts import FORMATS
from tunesmith.errors import RunFailed, Stopped, UserError
from tunesmith.export import FORMATS as EXPORT_FORMATS
from tunesmith.export import GGUF_QUANTS
from tunesmith.model.student import STRATEGIES

app = typer.Typer(
    name="tunesmith",
    help="Fine-tune pre-trained language models on the machine you have.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# Help texts list the values the code accepts, read from where they are defined.
PRECISION_HELP = " | ".join(PRECISIONS)
METHODS_HELP = "Methods (config key `method`):\n\n" + "\n\n".join(f"{name}: {m.summary}" for name, m in METHODS.items())


@app.command(epilog=METHODS_HELP)
def train(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set train.lr=1e-4 (repeatable)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run from its latest checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="data-parallel processes on this machine (starts them as "
                              "torchrun does; on GPUs, one per GPU); many machines: run torchrun yourself"),
):
    """Fine-tune a model as the config says; writes runs/<name>/."""
    from tunesmith.config import load_config
    from tunesmith.run import train as run_training

    cfg = load_config(config, set_)  # bad config: one error here, before any process starts
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from tunesmith.engine.distributed import launch_local

        argv = ["train", str(config), *(f"--set={s}" for s in set_), *(["--resume"] if resume else []),
                *(["--quiet"] if quiet else [])]
        raise typer.Exit(launch_local(nproc, argv))
    summary = run_training(cfg, resume=resume, console=err, quiet=quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun the other ranks have nothing to report
        print(json.dumps(summary, indent=2))


@app.command()
def quickstart(
    workdir: Path = typer.Option(Path("quickstart"), "--dir", help="where data, config and run go"),
    model: str = typer.Option("smollm2-135m-instruct", help="model reference"),
    max_steps: Optional[int] = typer.Option(None, help="LoRA optimizer steps per variant  [default: 40]"),
    test_limit: Optional[int] = typer.Option(None, help="score only the first N test examples"),
    set_: list[str] = typer.Option([], "--set", help="override a key of the quickstart's config: --set forgetting.probe_limit=48"),
):
    """The main job on embedded defaults: prompting baselines, LoRA with and without self-replay, forgetting, report."""
    from tunesmith.quickstart import run_quickstart

    steps = {} if max_steps is None else {"max_steps": max_steps}
    run_quickstart(workdir, model=model, test_limit=test_limit, console=err, out=out, overrides=set_, **steps)


@app.command()
def export(
    run_or_model: str = typer.Argument(..., help="run directory or model reference"),
    to: Path = typer.Option(..., "--to", help="target folder (must not exist or be empty)"),
    merge: bool = typer.Option(False, "--merge", help="merge a LoRA adapter into the base weights"),
    format: str = typer.Option("hf", "--format", help=f"{' | '.join(EXPORT_FORMATS)}: a Hugging Face folder, or one file (adapter merged; Llama family)"),
    quant: str = typer.Option("f16", "--quant", help=f"gguf weights: {' | '.join(GGUF_QUANTS)}"),
):
    """Write a run's adapter, or a merged / full model, in Hugging Face layout or as GGUF; with a model card."""
    from tunesmith.export.exporter import export as do_export

    result = do_export(run_or_model, to, merge=merge, format=format, quant=quant)
    print(json.dumps(result, indent=2))


@app.command()
def generate(
    model: str = typer.Argument(..., help="run directory or model reference"),
    prompt: str = typer.Option(..., "--prompt", help="user message"),
    system: Optional[str] = typer.Option(None, help="system message"),
    max_new_tokens: int = typer.Option(256, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    top_k: int = typer.Option(0, min=0),
    seed: int = typer.Option(0),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
):
    """Answer one prompt with the model's chat template."""
    import torch

    from tunesmith.runtime.precision import inference_dtype
    from tunesmith.eval.generate import Sampling, generate_batch
    from tunesmith.model.load import load_for_inference

    _check_precision(precision)
    torch.manual_seed(seed)
    m, tok = load_for_inference(model, dtype=inference_dtype(precision))
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    reply = generate_batch(m, tok, [messages], Sampling(max_new_tokens, temperature, top_p, top_k))[0]
    print(reply)


@app.command()
def chat(
    model: str = typer.Argument(..., help="run directory or model reference"),
    system: Optional[str] = typer.Option(None, help="system message"),
    max_new_tokens: int = typer.Option(512, min=1),
    temperature: float = typer.Option(0.7, min=0.0, help="0 = greedy"),
    top_p: float = typer.Option(0.9, min=0.0, max=1.0),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
):
    """Talk to a model; replies stream token by token. /reset clears the history, /exit leaves."""
    from tunesmith.chat_session import chat_loop
    from tunesmith.runtime.precision import inference_dtype
    from tunesmith.eval.generate import Sampling
    from tunesmith.model.load import load_for_inference

    _check_precision(precision)
    m, tok = load_for_inference(model, dtype=inference_dtype(precision))
    chat_loop(m, tok, Sampling(max_new_tokens, temperature, top_p), system=system, console=err)


@app.command()
def label(
    model: str = typer.Option(..., "--model", help="run directory or model reference that writes the replies"),
    prompts: Path = typer.Option(..., "--prompts", help="prompts to judge (prompt records, or chat data: the part before its last reply)"),
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
    from tunesmith.runtime.precision import inference_dtype
    from tunesmith.label.app import serve
    from tunesmith.label.session import LabelSession
    from tunesmith.model.load import load_for_inference

    _check_precision(precision)
    m, tok = load_for_inference(model, dtype=inference_dtype(precision))
    session = LabelSession(m, tok, prompts, out, model, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, seed=seed)
    progress = session.progress()

    def ready(url: str) -> None:
        print(f"labelling page: {url}  ({progress['judged']} of {progress['total']} prompts judged; "
              f"writing {out}; Ctrl-C stops)", flush=True)

    serve(session, port, on_ready=ready)


@app.command()
def serve(
    model: str = typer.Argument(..., help="run directory or model reference: the base (and its adapter, for an adapter run)"),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=PATH: serve another adapter (run directory or adapter "
                                      "folder) over the same base, selected by model=NAME (repeatable)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (loopback by default: this machine only)"),
    port: int = typer.Option(8000, min=0, max=65535, help="port (0: any free port)"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="environment variable holding the key "
                                              "clients must send as 'Authorization: Bearer KEY'"),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1, help="the most tokens one reply may ask for"),
    max_queue: int = typer.Option(32, "--max-queue", min=1, help="requests running or waiting; more get 429"),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
):
    """Serve the model and its adapters with the OpenAI API: /v1/models, /v1/chat/completions, /v1/completions."""
    from tunesmith.runtime.precision import inference_dtype
    from tunesmith.serve import api_key_from, is_loopback, serve as run_server
    from tunesmith.serve.app import build_app
    from tunesmith.serve.models import load_served, parse_adapter_option

    _check_precision(precision)
    key = api_key_from(api_key_env)
    named = [parse_adapter_option(a) for a in adapter]
    served = load_served(model, named, dtype=inference_dtype(precision))
    if not is_loopback(host) and key is None:
        err.print(f"[yellow]warning: listening on {host} without --api-key-env: anyone who can reach this port "
                  "can use the model[/yellow]")

    def ready(url: str) -> None:
        print(f"serving {', '.join(served.ids)} at {url}  (Ctrl-C stops)", flush=True)

    run_server(build_app(served, api_key=key, max_tokens=max_tokens, max_queue=max_queue), host, port, on_ready=ready)


student_app = typer.Typer(help="Smaller students of a model, for distillation.", no_args_is_help=True)
app.add_typer(student_app, name="student")


@student_app.command("create")
def student_create(
    teacher: str = typer.Argument(..., help="teacher: run directory or model reference (Llama-style decoder)"),
    layers: int = typer.Option(..., "--layers", help="decoder layers the student keeps"),
    out: Path = typer.Option(..., "--out", help="target folder (must not exist or be empty)"),
    strategy: str = typer.Option("uniform", help=f"{' | '.join(STRATEGIES)}: which of the teacher's layers"),
):
    """A student of the same architecture: a subset of the teacher's layers with their weights."""
    from tunesmith.model.student import create_student

    print(json.dumps(create_student(teacher, layers, out, strategy), indent=2))


distill_app = typer.Typer(help="Sequence-level distillation data: a teacher's replies to your prompts.", no_args_is_help=True)
app.add_typer(distill_app, name="distill")


@distill_app.command("generate")
def distill_generate(
    teacher: str = typer.Option(..., "--teacher", help="model reference, or an OpenAI-compatible base URL (http(s)://.../v1)"),
    prompts: Path = typer.Option(..., "--prompts", help="prompts (prompt records, or chat data: the part before its last reply)"),
    out: Path = typer.Option(..., "--out", help="JSONL of {prompt, completion}, appended to; a restart skips prompts answered there"),
    teacher_model: Optional[str] = typer.Option(None, "--teacher-model", help="endpoint: the model name to ask for"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="endpoint: environment variable holding the API key"),
    max_tokens: int = typer.Option(512, min=1, help="longest reply"),
    rpm: Optional[float] = typer.Option(None, min=0.001, help="endpoint: at most this many requests a minute"),
    retries: int = typer.Option(6, min=0, help="endpoint: retries of a failed request (exponential backoff)"),
    limit: Optional[int] = typer.Option(None, min=1, help="only the first N prompts"),
):
    """A teacher answers prompts; the answers are SFT data for a student (then: tunesmith train)."""
    from tunesmith.teacher_replies import EndpointTeacher, LocalTeacher, generate_replies

    if teacher.startswith(("http://", "https://")):
        source = EndpointTeacher(teacher, teacher_model or "", api_key_env, max_tokens=max_tokens, retries=retries, rpm=rpm)
    else:
        if teacher_model or api_key_env or rpm:
            raise UserError("--teacher-model, --api-key-env and --rpm are for an endpoint (--teacher http(s)://...)")
        source = LocalTeacher(teacher, max_tokens=max_tokens)
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("teacher replies", total=None)
        result = generate_replies(source, prompts, out, limit=limit, progress=lambda n: bar.advance(task, n))
    print(json.dumps(result, indent=2))


@app.command("eval")
def evaluate(
    model: str = typer.Argument(..., help="run directory or model reference"),
    data: Path = typer.Option(..., "--data", help="test data (chat or prompt/completion)"),
    shots: str = typer.Option("0", help="comma-separated in-context example counts, e.g. 0,3"),
    shots_from: Optional[str] = typer.Option(None, help="where k-shot examples are drawn from (default: the run's training data)"),
    system: Optional[str] = typer.Option(None, help="system prompt"),
    metric: Optional[str] = typer.Option(None, help="extra metric as module:function(prediction, reference)"),
    limit: Optional[int] = typer.Option(None, min=1),
    max_new_tokens: int = typer.Option(64, min=1),
    batch_size: int = typer.Option(16, min=1),
    seed: int = typer.Option(0, help="seed for drawing the k-shot examples"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write scores here (predictions beside it)"),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
):
    """Score greedy replies on a test set: exact match, normalised EM, token F1, JSON validity and
    fields, your metric; zero- and k-shot; prompt tokens and latency per request."""
    from tunesmith.data.records import load_examples
    from tunesmith.runtime.precision import inference_dtype
    from tunesmith.eval.metrics import load_user_metric
    from tunesmith.eval.task import draw_shots, evaluate_task, shot_label
    from tunesmith.model.load import load_for_inference

    _check_precision(precision)
    counts = _shot_counts(shots)
    examples = load_examples(data)[:limit]
    pool = _shot_pool(model, shots_from) if any(counts) else []
    if metric:
        load_user_metric(metric)
    m, tok = load_for_inference(model, dtype=inference_dtype(precision))
    results = []
    for k in counts:
        label = shot_label(k)
        preds = json_out.with_name(f"{json_out.stem}-shots-{k}.predictions.jsonl") if json_out else None
        results.append(evaluate_task(m, tok, examples, label=label, shots=draw_shots(pool, k, seed), system=system,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size, metric=metric, predictions_path=preds))
    value = results[0] if len(results) == 1 else results
    if json_out:
        json_out.write_text(json.dumps(value, indent=2))
    print(json.dumps(value, indent=2))


def _shot_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--shots {text!r}: expected comma-separated counts, e.g. 0,3") from None
    if not counts or counts[0] < 0:
        raise UserError(f"--shots {text!r}: counts must be 0 or more")
    return counts


def _shot_pool(model: str, shots_from: str | None):
    """k-shot examples: --shots-from, or the training data named in a run directory's config."""
    from tunesmith.config import load_config
    from tunesmith.data.records import load_examples
    from tunesmith.run import train_sources

    if shots_from:
        return load_examples(shots_from)
    saved = Path(model) / "config.yaml"
    if saved.is_file():  # the run's own training split, read as training read it (source options, val split)
        sources, _ = train_sources(load_config(saved), err)
        return [e for src in sources for e in src]
    raise UserError("--shots above 0 needs examples to draw from: give --shots-from TRAIN_DATA (or a run directory as the model)")


@app.command()
def compare(
    config: Path = typer.Argument(..., help="run config with compare.variants"),
    set_: list[str] = typer.Option([], "--set", help="override a config key (repeatable)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
):
    """Prompting baselines and every tuning variant in the config, scored and probed alike; one report."""
    from tunesmith.compare import run_compare
    from tunesmith.config import load_config

    cfg = load_config(config, set_)
    result = run_compare(cfg, source=str(config), console=err, quiet=quiet)
    result.pop("summary")
    print(json.dumps(result, indent=2))


data_app = typer.Typer(help="Look at data before training on it.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    path: str = typer.Argument(..., help="data file, saved dataset folder or hub dataset id"),
    model: str = typer.Option("smollm2-135m-instruct", help="model whose tokenizer and chat template render the data"),
    format: str = typer.Option("auto", help=" | ".join(FORMATS)),
    max_length: int = typer.Option(1024, min=8),
    train_on: str = typer.Option("all_assistant", help=" | ".join(get_args(TrainOn))),
    show: int = typer.Option(2, min=0, help="examples to render with the loss mask"),
    png: Optional[Path] = typer.Option(None, help="write the length histogram here (PNG)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the statistics here"),
):
    """Layout, counts, token lengths, truncation and a masked preview; exit 2 if any record is bad."""
    from tunesmith.report.data_inspection import inspect
    from tunesmith.model.load import load_tokenizer, tokenizer_dir
    from tunesmith.model.resolve import resolve

    if format not in FORMATS:
        raise UserError(f"--format {format!r}: use one of {', '.join(FORMATS)}")
    if train_on not in get_args(TrainOn):
        raise UserError(f"--train-on {train_on!r}: use one of {', '.join(get_args(TrainOn))}")
    tokenizer = load_tokenizer(tokenizer_dir(resolve(model)))
    stats = inspect(path, tokenizer, out, fmt=format, max_length=max_length, train_on=train_on, show=show, png=png)
    if json_out:
        json_out.write_text(json.dumps(stats, indent=2))
    if stats["problems"]:
        raise typer.Exit(2)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: use {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line and exit code 2; the rest exit 1."""
    try:
        app(args=argv, prog_name="tunesmith", standalone_mode=True)
    except SystemExit:
        raise
    except (UserError, RunFailed) as e:
        rank = f"rank {os.environ['RANK']}: " if os.environ.get("RANK", "0") != "0" else ""  # under torchrun
        for line in str(e).splitlines():  # one problem per line, each a complete message
            err.print(f"error: {rank}{line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except Stopped as e:  # SIGTERM or Ctrl-C while training: checkpoint written, not a failure
        if os.environ.get("RANK", "0") == "0":
            err.print(f"stopped: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # a bug or an environment problem: say what, offer the traceback
        if os.environ.get("TUNESMITH_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        err.print(f"error: {type(e).__name__}: {first} (set TUNESMITH_DEBUG=1 for the traceback)",
                  markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
