"""Bootstrap confidence intervals: how much a score could move with another draw of the test set.

Percentile bootstrap over examples, with a fixed seed so a report is reproducible. The paired
version resamples the same examples for both models, which is what makes a base-vs-tuned
difference on one test set meaningful.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def percentile_interval(stats, confidence: float = 0.95) -> tuple[float, float]:
    """The central `confidence` share of a bootstrap distribution (linear interpolation)."""
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(np.asarray(stats, dtype=float), [tail, 100 - tail])
    return float(lo), float(hi)


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[idx].mean(axis=1)


def bootstrap_ci(values, *, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Mean of per-example values with its percentile-bootstrap interval."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("bootstrap of no values")
    lo, hi = percentile_interval(_resampled_means(v, resamples, seed), confidence)
    return {"mean": float(v.mean()), "lo": lo, "hi": hi, "n": int(v.size), "confidence": confidence}


def paired_bootstrap_ci(before, after, *, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Mean of (after - before) over the same examples, resampled together."""
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same examples: {a.size} vs {b.size} values")
    return bootstrap_ci(b - a, confidence=confidence, resamples=resamples, seed=seed)
