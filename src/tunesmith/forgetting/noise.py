"""How much the probe moves with no training at all, and what a measured change may then be called.

The base model probed twice, at the run's batch size and at another one, in the run's precision,
gives different answers to a few questions: batching changes the padding and so the rounding, and
a greedy reply can turn on one rounded logit. That share of flipped items is the probe's noise
floor; a tuned model's change in general QA no larger than it cannot be told from batching noise,
whatever its bootstrap interval says. Drift has a floor too: the mean per-prompt difference in
NLL between the two base passes.

Verdicts on the QA change (points, paired 95% interval [lo, hi], floor f):

- "forgetting": hi < 0 and the change is below -f (a drop beyond the interval and the floor)
- "gain": lo > 0 and the change is above +f
- "no forgetting": lo >= -f (the interval rules out a drop larger than batching noise)
- "inconclusive": otherwise; the probe cannot say either way (more items, `forgetting.probe_limit` unset)
"""

from __future__ import annotations


def other_batch_size(batch_size: int) -> int:
    """The second base pass's batch size: half the run's (2 for a run that generates one at a time)."""
    return batch_size // 2 if batch_size > 1 else 2


def floor(base: dict, again: dict, batch_sizes: tuple[int, int]) -> dict:
    """The noise floor from two base passes over the same items (probe results, per item)."""
    flipped = sum(a["correct"] != b["correct"] for a, b in zip(base["qa"], again["qa"]))
    n = len(base["qa"])
    drift = [abs(a["nll"] - b["nll"]) for a, b in zip(base["drift"], again["drift"])]
    return {
        "batch_sizes": list(batch_sizes),
        "qa_flipped": flipped,
        "qa_items": n,
        "qa": flipped / n if n else 0.0,
        "drift": sum(drift) / len(drift) if drift else 0.0,
    }


def verdict(change: dict, noise: float) -> str:
    """What a QA change (mean, lo, hi) means against the noise floor; see the module's rules."""
    if change["hi"] < 0 and change["mean"] < -noise:
        return "forgetting"
    if change["lo"] > 0 and change["mean"] > noise:
        return "gain"
    if change["lo"] >= -noise:
        return "no forgetting"
    return "inconclusive"


SENTENCES = {
    "forgetting": "lost general capability: the drop is beyond both its 95% interval and the noise floor",
    "gain": "gained general capability beyond both its 95% interval and the noise floor",
    "no forgetting": "no forgetting: the 95% interval rules out a drop larger than the noise floor",
    "inconclusive": "inconclusive: the 95% interval allows a drop larger than the noise floor, but does not show one",
}
