"""The run report: report.json (every number, each with the file it came from), report.md,
report.html and the plots, all built from the JSON files the run wrote and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith import atomic
from tunesmith.engine.logbook import read_metrics
from tunesmith.eval.bootstrap import paired_bootstrap_ci
from tunesmith.eval.task import per_example_scores, primary_interval
from tunesmith.report import plots
from tunesmith.report.recommend import interpolation_notes, recommend, versus_endpoint
from tunesmith.report.render import render_html, render_markdown


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _score_row(result: dict, primary: str, kind: str, source: str, variant: str | None = None) -> dict:
    s = primary_interval(result, primary)
    row = {
        "label": result["label"],
        "kind": kind,
        "score": s["mean"],
        "lo": s["lo"],
        "hi": s["hi"],
        "n": result["n"],
        "prompt_tokens": result["prompt_tokens"],
        "latency_ms": result["latency_s"] * 1000,
        "source": source,
        "cost_per_1000": result.get("cost_per_1000"),
    }
    if variant is not None:
        row["variant"] = variant
    return row


def _forgetting_row(variant: str, label: str, f: dict, source: str) -> dict:
    qa, drift = f["qa"], f["drift"]
    row = {
        "variant": variant,
        "label": label,
        "qa_base": qa["base"]["mean"],
        "qa_base_lo": qa["base"]["lo"],
        "qa_base_hi": qa["base"]["hi"],
        "qa_tuned": qa["tuned"]["mean"],
        "qa_tuned_lo": qa["tuned"]["lo"],
        "qa_tuned_hi": qa["tuned"]["hi"],
        "qa_change": qa["change"]["mean"],
        "qa_change_lo": qa["change"]["lo"],
        "qa_change_hi": qa["change"]["hi"],
        "qa_items": qa["base"]["n"],
        "retention": qa["retention"],
        "drift_base": drift["base_nll"]["mean"],
        "drift_tuned": drift["tuned_nll"]["mean"],
        "drift_increase": drift["increase"]["mean"],
        "drift_increase_lo": drift["increase"]["lo"],
        "drift_increase_hi": drift["increase"]["hi"],
        "drift_prompts": drift["base_nll"]["n"],
        "source": source,
        "qa_gained": qa.get("gained"),
        "qa_lost": qa.get("lost"),
    }
    if "floor" in f:  # runs before the noise floor was measured have none
        row.update(
            floor_qa=f["floor"]["qa"],
            floor_qa_flipped=f["floor"]["qa_flipped"],
            floor_drift=f["floor"]["drift"],
            floor_batch_sizes=f["floor"]["batch_sizes"],
            verdict=qa["verdict"],
        )
    if "text" in f:
        t = f["text"]
        row.update(
            text_base_ppl=t["base_perplexity"],
            text_tuned_ppl=t["tuned_perplexity"],
            text_nll_increase=t["nll_increase"]["mean"],
            text_nll_increase_lo=t["nll_increase"]["lo"],
            text_nll_increase_hi=t["nll_increase"]["hi"],
            text_documents=t["documents"],
        )
    return row


def collect(out_dir: Path, runs: list[tuple[str, Path]], baselines_dir: Path | None, primary: str) -> dict:
    """Everything the report shows, gathered from the runs' JSON files."""
    task, forgetting, training, distill = [], [], [], []
    for path in (
        sorted((baselines_dir / "baselines").glob("shots-*.json"), key=lambda p: int(p.stem.split("-")[1]))
        if baselines_dir
        else []
    ):
        task.append(_score_row(json.loads(path.read_text()), primary, "prompting", _rel(path, out_dir)))
    predictions = {}  # a row's label -> its predictions file, for paired differences
    for path in sorted((baselines_dir / "baselines").glob("endpoint-*.json")) if baselines_dir else []:
        if path.name.endswith("_predictions.jsonl"):
            continue
        result = json.loads(path.read_text())
        task.append(_score_row(result, primary, "endpoint", _rel(path, out_dir)))
        predictions[result["label"]] = path.with_name(result["predictions"]) if result.get("predictions") else None
    for variant, run_dir in runs:
        label = f"tuned: {variant}"
        training.append(_training_row(variant, run_dir, out_dir))
        test = _read(run_dir / "eval" / "test.json")
        if test is not None:
            test["label"] = label
            task.append(_score_row(test, primary, "tuned", _rel(run_dir / "eval" / "test.json", out_dir), variant))
            predictions[label] = run_dir / "eval" / "test_predictions.jsonl"
        f = _read(run_dir / "forgetting" / "summary.json")
        if f is not None:
            forgetting.append(
                _forgetting_row(variant, label, f, _rel(run_dir / "forgetting" / "summary.json", out_dir))
            )
        _add_interpolated(variant, label, run_dir, out_dir, primary, task, forgetting, predictions)
        d = _read(run_dir / "eval" / "distill.json")
        if d is not None:
            distill.append({"variant": variant, **d, "source": _rel(run_dir / "eval" / "distill.json", out_dir)})
    retained = {r["variant"]: r["retention"] for r in forgetting if r["retention"] is not None}
    tradeoff = [{**r, "retention": 1.0} for r in task if r["kind"] == "prompting"]
    tradeoff += [{**r, "retention": retained[r["variant"]]} for r in task if r.get("variant") in retained]
    recommendation = recommend(task, forgetting)
    for note in interpolation_notes(task, forgetting):
        recommendation.setdefault("details", []).append(note)
    frontier = _versus_endpoint(task, predictions, primary)
    if frontier:
        recommendation["endpoint"] = frontier
        recommendation.setdefault("details", []).append(frontier["text"])
    return {
        "primary": primary,
        "task": task,
        "forgetting": forgetting,
        "training": training,
        "distill": distill,
        "tradeoff": tradeoff,
        "recommendation": recommendation,
    }


SUMMARY_KEYS = (
    "steps",
    "train_seconds",
    "final_loss",
    "val_loss",
    "trainable_parameters",
    "tokens",
    "precision",
    "method",
)


def _training_row(variant: str, run_dir: Path, out_dir: Path) -> dict:
    """What a run's summary.json says about its training."""
    summary = _read(run_dir / "summary.json") or {}
    return {
        "variant": variant,
        "source": _rel(run_dir / "summary.json", out_dir),
        **{k: summary.get(k) for k in SUMMARY_KEYS},
        "validation": {k: v for k, v in summary.get("validation", {}).items() if k != "loss"},
        "mitigation": summary.get("mitigation", {}),
        "stopped_early": summary.get("stopped_early"),
        "best": summary.get("best"),
    }


def _add_interpolated(
    variant: str,
    label: str,
    run_dir: Path,
    out_dir: Path,
    primary: str,
    task: list,
    forgetting: list,
    predictions: dict,
) -> None:
    """The task and forgetting rows of each interpolated model of a run (forgetting.interpolate)."""
    for point in sorted(run_dir.glob("interpolate/alpha-*"), key=lambda d: float(d.name.split("-", 1)[1])):
        alpha = float(point.name.split("-", 1)[1])
        name, point_label = f"{variant}@{alpha:g}", f"{label} α={alpha:g}"
        test, f = _read(point / "test.json"), _read(point / "forgetting" / "summary.json")
        if test is None or f is None:
            continue
        test["label"] = point_label
        row = _score_row(test, primary, "tuned", _rel(point / "test.json", out_dir), name)
        row["interpolation"] = {"of": variant, "alpha": alpha, "run_dir": str(run_dir)}
        task.append(row)
        predictions[point_label] = point / "test_predictions.jsonl"
        forgetting.append(_forgetting_row(name, point_label, f, _rel(point / "forgetting" / "summary.json", out_dir)))


def _per_example(path: Path | None, metric: str) -> list[tuple[str, float]] | None:
    return per_example_scores(path, metric) if path is not None and path.is_file() else None


def _versus_endpoint(task: list[dict], predictions: dict, primary: str) -> dict | None:
    """The best tuned model against the best-scoring endpoint baseline, paired over the test examples."""
    tuned = [r for r in task if r["kind"] == "tuned"]
    endpoints = [r for r in task if r["kind"] == "endpoint"]
    if not tuned or not endpoints:
        return None
    best_t, best_e = max(tuned, key=lambda r: r["score"]), max(endpoints, key=lambda r: r["score"])
    a, b = (
        _per_example(predictions.get(best_e["label"]), primary),
        _per_example(predictions.get(best_t["label"]), primary),
    )
    if not a or not b or [s for s, _ in a] != [s for s, _ in b]:
        return None  # not the same examples: no paired comparison
    diff = paired_bootstrap_ci([v for _, v in a], [v for _, v in b])
    return versus_endpoint(best_t, best_e, diff)


def draw(report: dict, out_dir: Path, runs: list[tuple[str, Path]]) -> dict[str, str]:
    """The report's plots (PNG), by section; a section without data gets no plot."""
    made = {}
    curves = {name if len(runs) > 1 else "": read_metrics(d / "metrics.jsonl") for name, d in runs}
    if any(curves.values()):
        made["loss"] = plots.loss_curves(curves, out_dir / "plots" / "report-loss.png", "training and validation loss")
    if report["task"]:
        made["task"] = plots.task_scores(report["task"], report["primary"], out_dir / "plots" / "report-task.png")
        made["cost"] = plots.cost_per_request(report["task"], out_dir / "plots" / "report-cost.png")
    if report["forgetting"]:
        made["forgetting"] = plots.forgetting(report["forgetting"], out_dir / "plots" / "report-forgetting.png")
    if report["distill"]:
        made["distill"] = plots.student_vs_teacher(report["distill"][0], out_dir / "plots" / "report-distill.png")
    if len(report["forgetting"]) > 1 and any(r["kind"] == "tuned" for r in report["tradeoff"]):
        made["tradeoff"] = plots.tradeoff(
            report["tradeoff"], report["primary"], out_dir / "plots" / "report-tradeoff.png"
        )
    return {k: _rel(v, out_dir) for k, v in made.items()}


def write_report(
    out_dir: Path,
    runs: list[tuple[str, Path]],
    *,
    baselines_dir: Path | None,
    primary: str,
    title: str | None = None,
    sweep: dict | None = None,
    extra_plots: dict[str, Path] | None = None,
) -> Path:
    """report.json, report.md and report.html in `out_dir`; returns the HTML path. A sweep's
    trials table (`sweep`, sweep.json's content) and its plots come first when given."""
    report = collect(out_dir, runs, baselines_dir, primary)
    report["title"] = title or f"tunesmith report: {out_dir.name}"
    if sweep is not None:
        report["sweep"] = sweep
    report["plots"] = draw(report, out_dir, runs) | {k: _rel(v, out_dir) for k, v in (extra_plots or {}).items()}
    atomic.write_text(out_dir / "report.json", json.dumps(report, indent=2))
    atomic.write_text(out_dir / "report.md", render_markdown(report))
    html = out_dir / "report.html"
    atomic.write_text(html, render_html(report))  # written last and whole: a run with its report.html is finished
    return html
