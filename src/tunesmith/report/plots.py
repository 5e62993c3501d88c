"""Plots a person would rather look at than read: loss curves, data lengths, and the report's
comparisons (task scores, forgetting, the trade-off between them, cost per request)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from tunesmith import atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
PROMPTING, TUNED, ENDPOINT = "#9e9e9e", "#1f77b4", "#ff7f0e"
KIND_COLORS = {"prompting": PROMPTING, "tuned": TUNED, "endpoint": ENDPOINT}


def loss_curve(records: list[dict], out: Path, title: str = "") -> Path:
    return loss_curves({"": records}, out, title)


def loss_curves(runs: dict[str, list[dict]], out: Path, title: str = "") -> Path:
    """Train (line) and validation (dots) loss of one or several runs on one set of axes."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    values = []
    for i, (name, records) in enumerate(runs.items()):
        color = COLORS[i % len(COLORS)]
        train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
        prefix = f"{name}: " if name else ""
        if train:
            ax.plot(*zip(*train), label=f"{prefix}train loss", color=color)
        if val:
            ax.plot(*zip(*val), "o--", label=f"{prefix}validation loss", color=color, alpha=0.8)
        values += [v for _, v in train + val if v > 0]
    if values and max(values) / min(values) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    return _save(fig, ax, out)


def length_histogram(lengths: list[int], max_length: int, out: Path, title: str) -> Path:
    """Tokens per example, with the cut-off a run would apply."""
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.hist(lengths, bins=40, color="#1f77b4")
    ax.axvline(max_length, color="#d62728", linestyle="--", label=f"max_length {max_length}")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title(title)
    return _save(fig, ax, out)


def _save(fig, ax, out: Path, legend: bool = True) -> Path:
    if legend:
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out


def _bars(ax, labels, values, colors, fmt: str, los=None, his=None):
    """Labelled bars, each with its value written on top; with los/his, 95% interval whiskers."""
    err = None
    if los is not None:
        err = [[v - lo for v, lo in zip(values, los)], [hi - v for v, hi in zip(values, his)]]
    ax.bar(range(len(labels)), values, yerr=err, capsize=4 if err else 0, color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=15, ha="right")
    for i, v in enumerate(values):
        ax.annotate(
            fmt.format(v), (i, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points"
        )
    ax.grid(axis="y", alpha=0.3)


def task_scores(rows: list[dict], metric: str, out: Path) -> Path:
    """Task score with 95% bootstrap intervals: prompting baselines (grey), endpoints (orange), tuned variants."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    _bars(
        ax,
        [r["label"] for r in rows],
        [r["score"] for r in rows],
        [KIND_COLORS[r["kind"]] for r in rows],
        "{:.1%}",
        [r["lo"] for r in rows],
        [r["hi"] for r in rows],
    )
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"{metric} on the test split")
    ax.set_title("task score: prompting the base model vs fine-tuning (95% CI)")
    return _save(fig, ax, out, legend=False)


def forgetting(rows: list[dict], out: Path) -> Path:
    """General QA accuracy and drift NLL, base vs each tuned variant, with intervals."""
    fig, (qa, drift) = plt.subplots(1, 2, figsize=(9, 4), dpi=110)
    labels = ["base"] + [r["variant"] for r in rows]
    colors = [PROMPTING] + [COLORS[i % len(COLORS)] for i in range(len(rows))]
    base = rows[0]
    _bars(
        qa,
        labels,
        [base["qa_base"]] + [r["qa_tuned"] for r in rows],
        colors,
        "{:.1%}",
        [base["qa_base_lo"]] + [r["qa_tuned_lo"] for r in rows],
        [base["qa_base_hi"]] + [r["qa_tuned_hi"] for r in rows],
    )
    qa.set_ylim(0, 1.08)
    qa.set_title("general QA accuracy (higher = kept)")
    _bars(drift, labels, [base["drift_base"]] + [r["drift_tuned"] for r in rows], colors, "{:.2f}")
    drift.set_title("drift: NLL of base's own replies (lower = closer)")
    fig.suptitle("catastrophic forgetting: base vs tuned")
    return _save(fig, qa, out, legend=False)


def _interpolation_lines(ax, rows: list[dict]) -> None:
    """Each interpolated variant's frontier: from the base (zero-shot, α = 0) through its α points to itself (α = 1)."""
    base = next((r for r in rows if r["kind"] == "prompting" and r["label"] == "zero-shot"), None)
    for i, of in enumerate(sorted({r["interpolation"]["of"] for r in rows if "interpolation" in r})):
        points = sorted(
            (r for r in rows if r.get("interpolation", {}).get("of") == of), key=lambda r: r["interpolation"]["alpha"]
        )
        points += [r for r in rows if r.get("variant") == of and "interpolation" not in r]
        if base is not None:
            points.insert(0, base)
        ax.plot(
            [r["retention"] for r in points],
            [r["score"] for r in points],
            color=COLORS[i % len(COLORS)],
            lw=1,
            ls="--",
            zorder=2,
            label=f"{of}: interpolation α = 0 → 1",
        )
    if any("interpolation" in r for r in rows):
        ax.legend(fontsize=7, loc="lower left")


def tradeoff(rows: list[dict], metric: str, out: Path) -> Path:
    """Task score against general QA retained, one point per model: up and right is better."""
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for i, r in enumerate(rows):
        color = PROMPTING if r["kind"] == "prompting" else COLORS[i % len(COLORS)]
        ax.scatter(r["retention"], r["score"], s=60, color=color, zorder=3)
        ax.annotate(r["label"], (r["retention"], r["score"]), xytext=(5, 4), textcoords="offset points", fontsize=8)
    _interpolation_lines(ax, rows)
    ax.set_xlabel("general QA retained (tuned / base accuracy)")
    ax.set_ylabel(f"task {metric}")
    ax.set_title("trade-off: task score vs general capability kept")
    ax.grid(alpha=0.3)
    return _save(fig, ax, out, legend=False)


def cost_per_request(rows: list[dict], out: Path) -> Path:
    """Prompt tokens and measured latency of one request, per way of getting the answer."""
    fig, (tok, lat) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=110)
    labels = [r["label"] for r in rows]
    colors = [KIND_COLORS[r["kind"]] for r in rows]
    for ax, key, title in (
        (tok, "prompt_tokens", "prompt tokens per request"),
        (lat, "latency_ms", "latency per request (ms, batch 1)"),
    ):
        _bars(ax, labels, [r[key] or 0 for r in rows], colors, "{:.0f}")
        ax.set_title(title)
    fig.suptitle("cost per request on this machine")
    return _save(fig, tok, out, legend=False)


def student_vs_teacher(result: dict, out: Path) -> Path:
    """A distilled student as a share of its teacher, per measure (run/student_vs_teacher.py)."""
    names = {
        "parameters": "parameters",
        "weights": "weights on disk",
        "speed": "generation tokens/s",
        "task": f"task ({result['primary']})",
        "general_qa": "general QA",
    }
    keys = [k for k in names if result["ratios"].get(k) is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    _bars(
        ax,
        [names[k] for k in keys],
        [result["ratios"][k] for k in keys],
        [COLORS[0] if k in ("parameters", "weights", "speed") else COLORS[2] for k in keys],
        "{:.2f}×",
    )
    ax.axhline(1.0, color="#555", lw=1, ls="--")
    ax.set_ylim(0, max([result["ratios"][k] for k in keys] + [1.0]) * 1.15)
    ax.set_ylabel("student / teacher")
    ax.set_title("distilled student vs its teacher (cost in blue, quality in green)")
    return _save(fig, ax, out, legend=False)
