"""After training: the tuned model's task score, the prompting baselines, the forgetting probe.

Each writes JSON into the run directory (the report reads nothing else):
  eval/test.json            tuned model on the test split (+ test_predictions.jsonl)
  baselines/shots-K.json    base model prompted with K in-context examples (+ predictions)
  baselines/endpoint-NAME-shots-K.json   a model behind an endpoint, prompted the same way (+ predictions)
  forgetting/summary.json   base vs tuned with bootstrap intervals (+ base.json, tuned.json per item)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from tunesmith import atomic
from tunesmith.config import RunConfig
from tunesmith.data.layouts import Example
from tunesmith.data.records import load_examples
from tunesmith.eval.endpoint import ChatEndpoint
from tunesmith.eval.endpoint_task import ReplyCache, evaluate_endpoint
from tunesmith.eval.task import draw_shots, evaluate_task, shot_label
from tunesmith.forgetting import probe
from tunesmith.forgetting.interpolation import Interpolation, unmerged_lora
from tunesmith.forgetting.reference import BaseReference
from tunesmith.model.adapters import can_merge
from tunesmith.model.quantize import is_quantized
from tunesmith.phases import phase


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(value, indent=2))
    return path


def inference_ready(model, precision: str):
    """Merged adapter weights (where the adapter merges) and the training precision: what
    generation will run on. A quantized base stays as trained: merging would requantize it."""
    if is_quantized(model):
        return model.eval()
    if can_merge(model):
        model = model.merge_and_unload()
    if precision == "bf16":
        model.to(torch.bfloat16)
    return model.eval()


def _task_kwargs(cfg: RunConfig) -> dict:
    e = cfg.eval
    return {
        "max_new_tokens": e.max_new_tokens,
        "batch_size": e.batch_size,
        "metric": e.metric,
        "latency_samples": e.latency_samples,
    }


def load_test_split(cfg: RunConfig) -> list[Example]:
    assert cfg.eval.test is not None  # called where the config names a test split
    return load_examples(cfg.eval.test)[: cfg.eval.limit]


def _priced(cfg: RunConfig, result: dict) -> dict:
    """A local model's cost per 1,000 requests: its measured latency (one request at a time) on a
    machine that costs eval.machine_price_per_hour."""
    if cfg.eval.machine_price_per_hour is not None:
        result["cost_per_1000"] = result["latency_s"] * 1000 / 3600 * cfg.eval.machine_price_per_hour
    return result


def score_tuned(cfg: RunConfig, run_dir: Path, model, tokenizer, label: str = "tuned") -> dict:
    result = _priced(
        cfg,
        evaluate_task(
            model,
            tokenizer,
            load_test_split(cfg),
            label=label,
            **_task_kwargs(cfg),
            predictions_path=run_dir / "eval" / "test_predictions.jsonl",
        ),
    )
    write_json(run_dir / "eval" / "test.json", result)
    return result


def validation_scorer(cfg: RunConfig, val_examples: list[Example], tokenizer):
    """eval.generate_every's scorer for the training loop: the test metrics on the first
    eval.generate_limit validation examples (the same ones each time), as val_<metric> means."""
    if not cfg.eval.generate_every:
        return None
    sample = val_examples[: cfg.eval.generate_limit]

    def score(model) -> dict[str, float]:
        result = evaluate_task(
            model, tokenizer, sample, label="validation", **{**_task_kwargs(cfg), "latency_samples": 0}
        )
        return {f"val_{name}": s["mean"] for name, s in result["scores"].items()}

    return score


def score_baselines(
    cfg: RunConfig, out_dir: Path, base: BaseReference, shot_pool: list[Example], console: Console
) -> list[dict]:
    """Zero-/k-shot prompting of the base model on the same test examples."""
    results = []
    model, tokenizer = base.get()
    examples = load_test_split(cfg)
    for k in cfg.eval.shots:
        label = shot_label(k)
        console.print(f"prompting baseline: {label} on the base model ...")
        shots = draw_shots(shot_pool, k, cfg.eval.shot_seed)
        with phase(f"prompting baseline: {label}", console):
            result = evaluate_task(
                model,
                tokenizer,
                examples,
                label=label,
                shots=shots,
                system=cfg.eval.system,
                **_task_kwargs(cfg),
                predictions_path=out_dir / "baselines" / f"shots-{k}_predictions.jsonl",
            )
        result["shot_sources"] = [s.source for s in shots]
        write_json(out_dir / "baselines" / f"shots-{k}.json", _priced(cfg, result))
        results.append(result)
    return results


def endpoint_slug(baseline) -> str:
    """A file-name-safe name for an endpoint baseline."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", baseline.label or baseline.model).strip("-") or "endpoint"


def score_endpoint_baselines(cfg: RunConfig, out_dir: Path, shot_pool: list[Example], console: Console) -> list[dict]:
    """eval.baselines: each endpoint prompted zero-/k-shot on the test split (replies cached on disk)."""
    results = []
    examples = load_test_split(cfg)
    cache = ReplyCache.shared()
    for b in cfg.eval.baselines:
        endpoint = ChatEndpoint(
            b.url,
            b.model,
            b.api_key_env,
            max_tokens=cfg.eval.max_new_tokens,
            rpm=b.rpm,
            options=("eval.baselines.model", "eval.baselines.api_key_env"),
        )
        name = b.label or b.model
        for k in b.shots if b.shots is not None else (cfg.eval.shots or [0]):
            label = f"{name}, {shot_label(k)}"
            console.print(f"endpoint baseline: {label} ({b.url}) ...")
            stem = f"endpoint-{endpoint_slug(b)}-shots-{k}"
            with phase(f"endpoint baseline: {label}", console):
                result = evaluate_endpoint(
                    endpoint,
                    examples,
                    label=label,
                    cache=cache,
                    shots=draw_shots(shot_pool, k, cfg.eval.shot_seed),
                    system=cfg.eval.system,
                    max_new_tokens=cfg.eval.max_new_tokens,
                    metric=cfg.eval.metric,
                    price_in=b.price_per_1m_input,
                    price_out=b.price_per_1m_output,
                    predictions_path=out_dir / "baselines" / f"{stem}_predictions.jsonl",
                )
            console.print(
                f"  {result['requests_sent']} requests sent, {len(examples) - result['requests_sent']} from the cache"
            )
            write_json(out_dir / "baselines" / f"{stem}.json", result)
            results.append(result)
    return results


def score_interpolation(
    cfg: RunConfig, run_dir: Path, model, tokenizer, base: BaseReference, console: Console
) -> list[dict]:
    """forgetting.interpolate: each θ(α) between base and tuned scored on the task and probed, in
    run_dir/interpolate/alpha-A/ (the tuned model is set back to θ afterwards)."""
    interpolation = Interpolation(model, None if unmerged_lora(model) else base.get()[0])
    results = []
    try:
        for alpha in cfg.forgetting.interpolate:
            interpolation.set(alpha)
            out = run_dir / "interpolate" / f"alpha-{alpha:g}"
            console.print(f"interpolated model, α = {alpha:g}: task and forgetting probe ...")
            with phase(f"{cfg.name}: interpolation α={alpha:g}", console):
                test = _priced(
                    cfg,
                    evaluate_task(
                        model,
                        tokenizer,
                        load_test_split(cfg),
                        label=f"α={alpha:g}",
                        **_task_kwargs(cfg),
                        predictions_path=out / "test_predictions.jsonl",
                    ),
                )
                write_json(out / "test.json", test)
                forgetting = probe_forgetting(cfg, out, model, tokenizer, base, console)
            results.append({"alpha": alpha, "test": test["scores"], "forgetting_qa": forgetting["qa"]["tuned"]})
    finally:
        interpolation.restore()
    return results


def probe_forgetting(cfg: RunConfig, run_dir: Path, model, tokenizer, base: BaseReference, console: Console) -> dict:
    f = cfg.forgetting
    console.print("forgetting probe: general QA and drift, base vs tuned ...")
    sizes: dict[str, Any] = {
        "text": f.text,
        "text_limit": f.text_limit,
        "batch_size": cfg.eval.batch_size,
        "limit": f.probe_limit,
    }
    with phase("forgetting probe: base model (cached after the first run)", console):
        base_items = probe.base_probe(base, **sizes)
    with phase("forgetting probe: noise floor, base model at another batch size (cached)", console):
        floor = probe.base_floor(base, base_items, **sizes)
    with phase(f"forgetting probe: {cfg.name}", console):
        tuned_items = probe.probe(model, tokenizer, base, **sizes)
    write_json(run_dir / "forgetting" / "base.json", base_items)
    write_json(run_dir / "forgetting" / "tuned.json", tuned_items)
    summary = probe.summarize(base_items, tuned_items, floor)
    write_json(run_dir / "forgetting" / "summary.json", summary)
    return summary


def compare_with_teacher(cfg: RunConfig, run_dir: Path, student, tokenizer) -> dict:
    """A distillation run's student next to its teacher (eval/distill.json, plots/distill.png)."""
    from tunesmith.report import plots
    from tunesmith.run import student_vs_teacher

    dtype = next(student.parameters()).dtype
    test = load_test_split(cfg) if cfg.eval.test else []
    kwargs = {k: v for k, v in _task_kwargs(cfg).items() if k != "latency_samples"}
    teacher = cfg.distill.teacher or cfg.distill.teachers[0].teacher  # several: next to the first
    result = student_vs_teacher.compare(
        student, tokenizer, teacher, dtype, test, cfg.forgetting.probe_limit, kwargs, cfg.eval.primary
    )
    write_json(run_dir / "eval" / "distill.json", result)
    plots.student_vs_teacher(result, run_dir / "plots" / "distill.png")
    return result
