"""Plots a person would rather look at than read: a run's loss curve, a data set's lengths."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def loss_curve(records: list[dict], out: Path, title: str = "") -> Path:
    steps = [r["step"] for r in records if r.get("loss") is not None]
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, losses, label="train loss", color="#1f77b4")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="#d62728")
    values = [v for v in losses + [v for _, v in val] if v > 0]
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


def _save(fig, ax, out: Path) -> Path:
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
