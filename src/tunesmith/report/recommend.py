"""The report's recommendation, computed from its numbers: prompt or fine-tune, and which variant.

Rules, stated so a reader can check them:
- Prompting is enough when the best prompting baseline is within `MARGIN` of the best tuned
  model, or their 95% intervals overlap: no training, nothing forgotten.
- Otherwise fine-tune. Among tuned variants within `TASK_TOLERANCE` of the best task score,
  recommend the one that keeps the most general QA accuracy (ties: the higher task score): a few
  points of task score are worth paying for general capability the base model had, more are not.
  Interpolated models (forgetting.interpolate) are candidates like any variant.
- Against a model behind an endpoint (a frontier model prompted, `eval.baselines`), on the
  paired difference over the same test examples: the tuned model when its interval lies above
  zero; the endpoint when the interval lies below -`MARGIN` (reliably better by more than that);
  otherwise they are level, and the cheaper per 1,000 requests wins (the tuned model's cost is
  this machine's time at `eval.machine_price_per_hour`; unpriced, a model you run yourself is
  taken as cheaper than a priced endpoint), then the faster.
"""

from __future__ import annotations

from tunesmith.forgetting.noise import SENTENCES

MARGIN = 0.02  # prompting is enough when the best tuned model is no further ahead than this
TASK_TOLERANCE = 0.05  # task score a variant may give up against the best one to keep more general capability


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def recommend(task: list[dict], forgetting: list[dict]) -> dict:
    prompting = [r for r in task if r["kind"] == "prompting"]
    tuned = [r for r in task if r["kind"] == "tuned"]
    if not tuned:
        return {"choice": None, "text": "No tuned model was scored on a test split; nothing to recommend."}
    best = max(tuned, key=lambda r: r["score"])
    kept = {r["variant"]: r for r in forgetting}
    out: dict = {"best_tuned": best["label"], "best_tuned_score": best["score"], "margin": MARGIN}
    lines = []
    if prompting:
        prompt = max(prompting, key=lambda r: r["score"])
        gap = best["score"] - prompt["score"]
        out.update(best_prompting=prompt["label"], best_prompting_score=prompt["score"], gap=gap)
        if gap <= MARGIN or best["lo"] <= prompt["hi"]:
            out["choice"] = "prompting"
            lines.append(
                f"Prompting is enough: {prompt['label']} prompting of the base model scores {_pct(prompt['score'])} "
                f"against {_pct(best['score'])} for the best tuned model ({best['label']}); the 95% intervals "
                f"overlap or the gap is under {_pct(MARGIN)}, so fine-tuning buys no reliable gain and risks "
                "forgetting."
            )
        else:
            out["choice"] = "fine-tune"
            lines.append(
                f"Fine-tune: {best['label']} scores {_pct(best['score'])} against {_pct(prompt['score'])} for the best "
                f"prompting baseline ({prompt['label']}), {gap * 100:.1f} points ahead with non-overlapping 95% "
                "intervals, "
                f"using {best['prompt_tokens']:.0f} prompt tokens per request instead of "
                f"{prompt['prompt_tokens']:.0f} and "
                f"{best['latency_ms']:.0f} ms instead of {prompt['latency_ms']:.0f} ms per request on this machine."
            )
    else:
        out["choice"] = "fine-tune"
        lines.append(
            f"{best['label']} scores {_pct(best['score'])}; no prompting baseline was run to compare with (eval.shots)."
        )

    if kept:
        for r in tuned:
            g = kept.get(r["variant"])
            if g is not None:
                floor = f", noise floor ±{g['floor_qa'] * 100:.1f}: {g['verdict']}" if "floor_qa" in g else ""
                lines.append(
                    f"{r['label']}: general QA {_pct(g['qa_base'])} → {_pct(g['qa_tuned'])} "
                    f"(change {g['qa_change'] * 100:+.1f} points, 95% CI {g['qa_change_lo'] * 100:+.1f} to "
                    f"{g['qa_change_hi'] * 100:+.1f}{floor}), drift {g['drift_increase']:+.3f} nats/token, "
                    f"task {_pct(r['score'])}."
                )
        if out["choice"] == "fine-tune":
            lines.append(_variant_choice(tuned, kept, best, out))
    out["text"], out["details"] = lines[0], lines[1:]
    return out


def interpolation_notes(task: list[dict], forgetting: list[dict]) -> list[str]:
    """For each tuned variant with interpolated points: does one keep more general QA than the
    variant itself at a task score within TASK_TOLERANCE of it? Said either way."""
    kept = {r["variant"]: r for r in forgetting}
    notes = []
    for tuned in [r for r in task if r["kind"] == "tuned" and "interpolation" not in r and r.get("variant") in kept]:
        points = [r for r in task if r.get("interpolation", {}).get("of") == tuned["variant"] and r["variant"] in kept]
        if not points:
            continue
        own = kept[tuned["variant"]]["qa_tuned"]
        better = [
            p for p in points if p["score"] >= tuned["score"] - TASK_TOLERANCE and kept[p["variant"]]["qa_tuned"] > own
        ]
        alphas = ", ".join(f"{p['interpolation']['alpha']:g}" for p in points)
        if better:
            pick = max(better, key=lambda p: (kept[p["variant"]]["qa_tuned"], p["score"]))
            a = pick["interpolation"]["alpha"]
            notes.append(
                f"Interpolation (α = {alphas}): α = {a:g} keeps general QA at "
                f"{_pct(kept[pick['variant']]['qa_tuned'])} "
                f"against {_pct(own)} for {tuned['label']}, with task score {_pct(pick['score'])} against "
                f"{_pct(tuned['score'])} (within {TASK_TOLERANCE * 100:.0f} points); make it with "
                f"tunesmith merge RUN --alpha {a:g} --to DIR."
            )
        else:
            notes.append(
                f"Interpolation (α = {alphas}): no interpolated point of {tuned['label']} keeps more general QA "
                f"than it ({_pct(own)}) at a task score within {TASK_TOLERANCE * 100:.0f} points of its "
                f"{_pct(tuned['score'])}."
            )
    return notes


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def versus_endpoint(tuned: dict, endpoint: dict, diff: dict) -> dict:
    """The tuned model against an endpoint's best prompting, from the paired difference
    `diff` (tuned - endpoint: mean, lo, hi) and both rows' cost per 1,000 requests and latency."""
    cost_t, cost_e = tuned.get("cost_per_1000"), endpoint.get("cost_per_1000")
    out = {
        "tuned": tuned["label"],
        "endpoint": endpoint["label"],
        "difference": diff,
        "cost_ratio": _ratio(cost_e, cost_t),
        "latency_ratio": _ratio(endpoint["latency_ms"], tuned["latency_ms"]),
    }
    gap = (
        f"{diff['mean'] * 100:+.1f} points (95% CI {diff['lo'] * 100:+.1f} to {diff['hi'] * 100:+.1f}, paired over "
        f"{diff['n']} test examples)"
    )
    cost_e_text = f"${cost_e:.2f}" if cost_e is not None else "unpriced"
    cost_t_text = f"${cost_t:.2f}" if cost_t is not None else "this machine's time"
    money = f"per 1,000 requests {cost_t_text} tuned vs {cost_e_text} for {endpoint['label']}"
    if out["cost_ratio"] is not None:
        money += f" ({out['cost_ratio']:.1f}× the tuned model's cost)"
    speed = f"latency {tuned['latency_ms']:.0f} ms vs {endpoint['latency_ms']:.0f} ms per request"
    if diff["lo"] > 0:
        out["choice"] = "tuned"
        verdict = f"The tuned model ({tuned['label']}) beats {endpoint['label']}: {gap}"
    elif diff["hi"] < -MARGIN:
        out["choice"] = "endpoint"
        verdict = (
            f"{endpoint['label']} beats the tuned model ({tuned['label']}) by more than {MARGIN * 100:.0f} points: "
            f"{gap}; the tuned model is the choice only if the cost or latency below outweighs that"
        )
    else:
        if cost_t is not None and cost_e is not None:
            cheaper = "tuned" if cost_t <= cost_e else "endpoint"
        elif cost_e is not None and cost_e > 0:
            cheaper = "tuned"  # a model run here has no per-request price; the endpoint does
        else:
            cheaper = "tuned" if tuned["latency_ms"] <= endpoint["latency_ms"] else "endpoint"
        out["choice"] = cheaper
        pick = tuned["label"] if cheaper == "tuned" else endpoint["label"]
        verdict = (
            f"The tuned model ({tuned['label']}) and {endpoint['label']} are level on the task: {gap}; "
            f"{pick} is the cheaper way to the same score"
        )
    out["text"] = f"{verdict}. Cost {money}; {speed}."
    return out


def _variant_choice(tuned: list[dict], kept: dict, best: dict, out: dict) -> str:
    """Which tuned variant to ship, and the sentence that says why."""
    probed = [r for r in tuned if r["variant"] in kept]
    if len(probed) == 1:
        [only] = probed
        out["recommended_variant"] = only["variant"]
        g = kept[only["variant"]]
        verdict = g.get("verdict") or ("forgetting" if g["qa_change_hi"] < 0 else "inconclusive")
        text = f"{only['label']}: {SENTENCES[verdict]}"
        if verdict == "forgetting":
            text += "; compare it with a mitigation, e.g. forgetting.replay: 0.25 (self-replay), to see what it costs"
        return text + "."
    near = [r for r in probed if r["score"] >= best["score"] - TASK_TOLERANCE] or [best]
    pick = max(near, key=lambda r: (kept.get(r["variant"], {}).get("qa_tuned", -1), r["score"]))
    out.update(recommended_variant=pick["variant"], task_tolerance=TASK_TOLERANCE)
    if "interpolation" in pick:
        out["recommended_interpolation"] = pick["interpolation"]
    g = kept.get(pick["variant"])
    cost = best["score"] - pick["score"]
    task_text = "the best" if cost <= 0 else f"{cost * 100:.1f} points below {best['label']}"
    text = (
        f"Recommended variant: {pick['label']}: of the variants within {TASK_TOLERANCE * 100:.0f} points of the best "
        "task "
        f"score it keeps the most general capability: QA {_pct(g['qa_tuned'] if g else None)} "
        f"(base {_pct(g['qa_base'] if g else None)}), task {_pct(pick['score'])} ({task_text})."
    )
    if "interpolation" in pick:
        text += (
            f" It is {pick['interpolation']['of']} moved α = {pick['interpolation']['alpha']:g} of the way from the "
            f"base: tunesmith merge {pick['interpolation']['run_dir']} --alpha {pick['interpolation']['alpha']:g} "
            "--to DIR."
        )
    left_out = [r["label"] for r in probed if r not in near]
    if left_out:
        text += (
            f" Not considered, more than {TASK_TOLERANCE * 100:.0f} points below the best task score: "
            f"{', '.join(left_out)}."
        )
    return text
