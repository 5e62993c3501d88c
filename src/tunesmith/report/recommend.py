"""The report's recommendation, computed from its numbers: prompt or fine-tune, and which variant.

Rules, stated so a reader can check them:
- Prompting is enough when the best prompting baseline is within `MARGIN` of the best tuned
  model, or their 95% intervals overlap: no training, nothing forgotten.
- Otherwise fine-tune. Among tuned variants within `MARGIN` of the best task score, recommend the
  one that keeps the most general QA accuracy (ties: the higher task score).
"""

from __future__ import annotations

MARGIN = 0.02


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
            lines.append(f"Prompting is enough: {prompt['label']} prompting of the base model scores {_pct(prompt['score'])} "
                         f"against {_pct(best['score'])} for the best tuned model ({best['label']}); the 95% intervals "
                         f"overlap or the gap is under {_pct(MARGIN)}, so fine-tuning buys no reliable gain and risks forgetting.")
        else:
            out["choice"] = "fine-tune"
            lines.append(f"Fine-tune: {best['label']} scores {_pct(best['score'])} against {_pct(prompt['score'])} for the best "
                         f"prompting baseline ({prompt['label']}), {gap * 100:.1f} points ahead with non-overlapping 95% intervals, "
                         f"using {best['prompt_tokens']:.0f} prompt tokens per request instead of {prompt['prompt_tokens']:.0f} and "
                         f"{best['latency_ms']:.0f} ms instead of {prompt['latency_ms']:.0f} ms per request on this machine.")
    else:
        out["choice"] = "fine-tune"
        lines.append(f"{best['label']} scores {_pct(best['score'])}; no prompting baseline was run to compare with (eval.shots).")

    if kept:
        near = [r for r in tuned if r["variant"] in kept and r["score"] >= best["score"] - MARGIN]
        pick = max(near or [best], key=lambda r: (kept.get(r["variant"], {}).get("qa_tuned", -1), r["score"]))
        out["recommended_variant"] = pick["variant"]
        f = kept.get(pick["variant"])
        for r in tuned:
            g = kept.get(r["variant"])
            if g is None:
                continue
            lines.append(f"{r['label']}: general QA {_pct(g['qa_base'])} → {_pct(g['qa_tuned'])} "
                         f"(change {g['qa_change'] * 100:+.1f} points, 95% CI {g['qa_change_lo'] * 100:+.1f} to {g['qa_change_hi'] * 100:+.1f}), "
                         f"drift {g['drift_increase']:+.3f} nats/token, task {_pct(r['score'])}.")
        if out["choice"] == "fine-tune" and f is not None:
            lines.append(f"Recommended variant: {pick['label']}: the most general capability kept "
                         f"(it still answers {_pct(f['retention'])} of the general questions the base model answered) within {_pct(MARGIN)} of the best task score.")
    out["text"], out["details"] = lines[0], lines[1:]
    return out
