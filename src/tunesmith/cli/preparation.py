"""Command groups that prepare data and students: data inspect, distill generate, student create."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import typer

from tunesmith import atomic
from tunesmith.cli.app import app, err, out
from tunesmith.config import TrainOn
from tunesmith.data.layouts import FORMATS
from tunesmith.errors import UserError
from tunesmith.model.student import STRATEGIES

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


distill_app = typer.Typer(
    help="Sequence-level distillation data: a teacher's replies to your prompts.", no_args_is_help=True
)
app.add_typer(distill_app, name="distill")


@distill_app.command("generate")
def distill_generate(
    teacher: str = typer.Option(
        ..., "--teacher", help="model reference, or an OpenAI-compatible base URL (http(s)://.../v1)"
    ),
    prompts: Path = typer.Option(
        ..., "--prompts", help="prompts (prompt records, or chat data: the part before its last reply)"
    ),
    out: Path = typer.Option(
        ..., "--out", help="JSONL of {prompt, completion}, appended to; a restart skips prompts answered there"
    ),
    teacher_model: str | None = typer.Option(None, "--teacher-model", help="endpoint: the model name to ask for"),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="endpoint: environment variable holding the API key"
    ),
    max_tokens: int = typer.Option(512, min=1, help="longest reply"),
    rpm: float | None = typer.Option(None, min=0.001, help="endpoint: at most this many requests a minute"),
    retries: int = typer.Option(6, min=0, help="endpoint: retries of a failed request (exponential backoff)"),
    limit: int | None = typer.Option(None, min=1, help="only the first N prompts"),
):
    """A teacher answers prompts; the answers are SFT data for a student (then: tunesmith train)."""
    from tunesmith.eval.endpoint import ChatEndpoint
    from tunesmith.teacher_replies import LocalTeacher, generate_replies

    source: ChatEndpoint | LocalTeacher
    if teacher.startswith(("http://", "https://")):
        source = ChatEndpoint(
            teacher,
            teacher_model or "",
            api_key_env,
            max_tokens=max_tokens,
            retries=retries,
            rpm=rpm,
            options=("--teacher-model", "--api-key-env"),
        )
    else:
        if teacher_model or api_key_env or rpm:
            raise UserError("--teacher-model, --api-key-env and --rpm are for an endpoint (--teacher http(s)://...)")
        source = LocalTeacher(teacher, max_tokens=max_tokens)
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("teacher replies", total=None)
        result = generate_replies(source, prompts, out, limit=limit, progress=lambda n: bar.advance(task, n))
    print(json.dumps(result, indent=2))


data_app = typer.Typer(help="Look at data before training on it.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    path: str | None = typer.Argument(
        None,
        help="data file, saved dataset folder, hub dataset id, or LLaMA-Factory's dataset_info.json (with --dataset)",
    ),
    model: str = typer.Option("smollm2-135m-instruct", help="model whose tokenizer and chat template render the data"),
    format: str = typer.Option("auto", help=" | ".join(FORMATS)),
    dataset: str | None = typer.Option(None, help="LLaMA-Factory: the dataset of the dataset_info.json at PATH"),
    config: Path | None = typer.Option(
        None,
        help="inspect every training source of this run config, as the run reads it (its model, options, train_on)",
    ),
    max_length: int = typer.Option(1024, min=8),
    train_on: str = typer.Option("all_assistant", help=" | ".join(get_args(TrainOn))),
    train_on_reasoning: bool = typer.Option(True, help="whether reasoning tokens carry loss"),
    show: int = typer.Option(2, min=0, help="examples to render with the loss mask"),
    png: Path | None = typer.Option(None, help="write the length histogram here (PNG)"),
    json_out: Path | None = typer.Option(None, "--json", help="write the statistics here"),
):
    """Layout, counts, token lengths, truncation and a masked preview; exit 2 if any record is bad."""
    from tunesmith.model.load import load_tokenizer, tokenizer_dir
    from tunesmith.model.resolve import resolve
    from tunesmith.report.data_inspection import inspect

    if format not in FORMATS:
        raise UserError(f"--format {format!r}: use one of {', '.join(FORMATS)}")
    if train_on not in get_args(TrainOn):
        raise UserError(f"--train-on {train_on!r}: use one of {', '.join(get_args(TrainOn))}")
    if (path is None) == (config is None):
        raise UserError("give a data PATH or --config RUN.yaml (one of them)")
    if config is not None:
        from tunesmith.config import load_config

        cfg = load_config(config)
        tokenizer = load_tokenizer(tokenizer_dir(resolve(cfg.model)))
        runs = [
            (
                s.path,
                {
                    **s.options(),
                    "train_on": s.train_on or cfg.data.train_on,
                    "train_reasoning": cfg.data.train_on_reasoning,
                    "max_length": cfg.data.max_length,
                },
            )
            for s in cfg.data.train
        ]
    else:
        assert path is not None  # PATH or --config, checked above
        tokenizer = load_tokenizer(tokenizer_dir(resolve(model)))
        runs = [
            (
                path,
                {
                    "fmt": format,
                    "dataset": dataset,
                    "train_on": train_on,
                    "train_reasoning": train_on_reasoning,
                    "max_length": max_length,
                },
            )
        ]
    stats = [inspect(p, tokenizer, out, show=show, png=png, **options) for p, options in runs]
    if json_out:
        atomic.write_text(json_out, json.dumps(stats[0] if len(stats) == 1 else stats, indent=2))
    if any(s["problems"] for s in stats):
        raise typer.Exit(2)
