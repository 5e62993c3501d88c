"""Commands that train and measure: train, quickstart, compare, eval."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from tunesmith import atomic
from tunesmith.cli.app import METHODS_HELP, PRECISION_HELP, app, check_precision, err, out
from tunesmith.errors import UserError

REPORT_TO_HELP = "experiment trackers, comma-separated: tensorboard,mlflow,wandb,trackio (config key report_to)"


def report_to_override(names: str | None) -> list[str]:
    """--report-to a,b as the --set that the config check then validates like any other key."""
    if names is None:
        return []
    return [f"report_to=[{','.join(n.strip() for n in names.split(',') if n.strip())}]"]


@app.command(epilog=METHODS_HELP)
def train(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set train.lr=1e-4 (repeatable)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run from its latest checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="data-parallel processes on this machine (starts them as "
        "torchrun does; on GPUs, one per GPU); many machines: run torchrun yourself",
    ),
    report_to: str | None = typer.Option(None, "--report-to", help=REPORT_TO_HELP),
):
    """Fine-tune a model as the config says; writes runs/<name>/."""
    from tunesmith.config import load_config
    from tunesmith.run import train as run_training

    set_ = [*set_, *report_to_override(report_to)]
    cfg = load_config(config, set_)  # bad config: one error here, before any process starts
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from tunesmith.engine.distributed import launch_local

        argv = [
            "train",
            str(config),
            *(f"--set={s}" for s in set_),
            *(["--resume"] if resume else []),
            *(["--quiet"] if quiet else []),
        ]
        raise typer.Exit(launch_local(nproc, argv))
    summary = run_training(cfg, resume=resume, console=err, quiet=quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun the other ranks have nothing to report
        print(json.dumps(summary, indent=2))


@app.command()
def quickstart(
    workdir: Path = typer.Option(Path("quickstart"), "--dir", help="where data, config and run go"),
    model: str = typer.Option("smollm2-135m-instruct", help="model reference"),
    max_steps: int | None = typer.Option(None, help="LoRA optimizer steps per variant  [default: 40]"),
    test_limit: int | None = typer.Option(None, help="score only the first N test examples"),
    set_: list[str] = typer.Option(
        [], "--set", help="override a key of the quickstart's config: --set forgetting.probe_limit=48"
    ),
):
    """The main job on embedded defaults: prompting baselines, LoRA with and without self-replay, forgetting, report."""
    from tunesmith.quickstart import run_quickstart

    steps = {} if max_steps is None else {"max_steps": max_steps}
    run_quickstart(workdir, model=model, test_limit=test_limit, console=err, out=out, overrides=set_, **steps)


@app.command()
def compare(
    config: Path = typer.Argument(..., help="run config with compare.variants"),
    set_: list[str] = typer.Option([], "--set", help="override a config key (repeatable)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
    report_to: str | None = typer.Option(None, "--report-to", help=REPORT_TO_HELP),
):
    """Prompting baselines and every tuning variant in the config, scored and probed alike; one report."""
    from tunesmith.compare import run_compare
    from tunesmith.config import load_config

    cfg = load_config(config, [*set_, *report_to_override(report_to)])
    result = run_compare(cfg, source=str(config), console=err, quiet=quiet)
    result.pop("summary")
    print(json.dumps(result, indent=2))


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="run config with a sweep: section (the search space)"),
    trials: int = typer.Option(
        ...,
        "--trials",
        min=1,
        help="trials to finish (pruned and failed ones count); "
        "run the same command again to resume a stopped or killed sweep",
    ),
    set_: list[str] = typer.Option([], "--set", help="override a config key (repeatable)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
    report_to: str | None = typer.Option(None, "--report-to", help=REPORT_TO_HELP),
):
    """Hyperparameter search with Optuna: each trial a run, pruned when it falls behind; report, best config."""
    from tunesmith.config import load_config
    from tunesmith.sweep import run_sweep

    cfg = load_config(config, [*set_, *report_to_override(report_to)])
    result = run_sweep(cfg, trials, source=str(config), console=err, quiet=quiet)
    print(json.dumps({k: result[k] for k in ("name", "metric", "best", "importance", "report")}, indent=2))


@app.command()
def rebase(
    old: str = typer.Argument(..., help="the old fine-tune: its run directory, or an OpenAI-compatible endpoint's URL"),
    to_base: str = typer.Option(..., "--to-base", help="the new base model (any model reference)"),
    extra_prompts: str | None = typer.Option(None, "--extra-prompts", help="more prompts for the old model to answer"),
    old_model: str | None = typer.Option(None, "--old-model", help="endpoint: the fine-tune's model name"),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="endpoint: environment variable with the key"),
    config: Path | None = typer.Option(
        None, "--config", help="the run config the old model was trained with (default: the run directory's own)"
    ),
    name: str | None = typer.Option(None, "--name", help="the new run's name  [default: OLD-rebased]"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="longest answer the old model gives"),
    set_: list[str] = typer.Option(
        [], "--set", help="override a key of the new run's config: --set train.max_steps=80"
    ),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
):
    """Move a fine-tune to a new base: the old model's answers train the new base; parity report."""
    from tunesmith.rebase import run_rebase

    result = run_rebase(
        old,
        to_base,
        extra_prompts=extra_prompts,
        old_model=old_model,
        api_key_env=api_key_env,
        config=config,
        name=name,
        max_tokens=max_tokens,
        overrides=set_,
        console=err,
        quiet=quiet,
    )
    print(json.dumps({k: result[k] for k in ("run_dir", "replies", "parity")}, indent=2))


@app.command("eval")
def evaluate(
    model: str = typer.Argument(..., help="run directory or model reference"),
    data: Path = typer.Option(..., "--data", help="test data (chat or prompt/completion)"),
    shots: str = typer.Option("0", help="comma-separated in-context example counts, e.g. 0,3"),
    shots_from: str | None = typer.Option(
        None, help="where k-shot examples are drawn from (default: the run's training data)"
    ),
    system: str | None = typer.Option(None, help="system prompt"),
    metric: str | None = typer.Option(None, help="extra metric as module:function(prediction, reference)"),
    limit: int | None = typer.Option(None, min=1),
    max_new_tokens: int = typer.Option(64, min=1),
    batch_size: int = typer.Option(16, min=1),
    seed: int = typer.Option(0, help="seed for drawing the k-shot examples"),
    json_out: Path | None = typer.Option(None, "--json", help="write scores here (predictions beside it)"),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    endpoint_model: str | None = typer.Option(None, help="with an http(s):// URL as the model: the model to ask for"),
    api_key_env: str | None = typer.Option(None, help="endpoint: environment variable holding the API key"),
    price_in: float | None = typer.Option(None, min=0, help="endpoint: dollars per million prompt tokens"),
    price_out: float | None = typer.Option(None, min=0, help="endpoint: dollars per million completion tokens"),
    rpm: float | None = typer.Option(None, min=0.001, help="endpoint: at most this many requests per minute"),
):
    """Score greedy replies on a test set: exact match, normalised EM, token F1, JSON validity and
    fields, your metric; zero- and k-shot; prompt tokens and latency per request. The model may be
    an OpenAI-compatible endpoint (its base URL with --endpoint-model): replies cached on disk,
    tokens, cost per 1,000 requests and latency from the server."""
    from tunesmith.data.records import load_examples
    from tunesmith.eval.metrics import load_user_metric
    from tunesmith.eval.task import draw_shots, evaluate_task, shot_label
    from tunesmith.model.load import load_for_inference
    from tunesmith.runtime.precision import inference_dtype

    check_precision(precision)
    counts = _shot_counts(shots)
    examples = load_examples(str(data))[:limit]
    pool = _shot_pool(model, shots_from) if any(counts) else []
    if metric:
        load_user_metric(metric)
    endpoint = None
    if model.startswith(("http://", "https://")):
        from tunesmith.eval.endpoint import ChatEndpoint
        from tunesmith.eval.endpoint_task import ReplyCache, evaluate_endpoint

        endpoint = ChatEndpoint(
            model,
            endpoint_model,
            api_key_env,
            max_tokens=max_new_tokens,
            rpm=rpm,
            options=("--endpoint-model", "--api-key-env"),
        )
        cache = ReplyCache.shared()
    elif endpoint_model or api_key_env or price_in is not None or price_out is not None:
        raise UserError(
            "--endpoint-model, --api-key-env and the prices are for an endpoint: give its http(s):// URL as the model"
        )
    else:
        m, tok = load_for_inference(model, dtype=inference_dtype(precision))
    results = []
    for k in counts:
        preds = json_out.with_name(f"{json_out.stem}-shots-{k}.predictions.jsonl") if json_out else None
        shared: dict[str, Any] = {
            "label": shot_label(k),
            "shots": draw_shots(pool, k, seed),
            "system": system,
            "max_new_tokens": max_new_tokens,
            "metric": metric,
            "predictions_path": preds,
        }
        if endpoint is not None:
            prices: dict[str, Any] = {"price_in": price_in, "price_out": price_out}
            results.append(evaluate_endpoint(endpoint, examples, cache=cache, **prices, **shared))
        else:
            results.append(evaluate_task(m, tok, examples, batch_size=batch_size, **shared))
    value = results[0] if len(results) == 1 else results
    if json_out:
        atomic.write_text(json_out, json.dumps(value, indent=2))
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
    raise UserError(
        "--shots above 0 needs examples to draw from: give --shots-from TRAIN_DATA (or a run directory as the model)"
    )
