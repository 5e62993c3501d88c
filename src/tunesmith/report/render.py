"""report.json -> report.md and report.html: the same sections, tables and plots in both."""

from __future__ import annotations

import html

PLOT_TITLES = {
    "task": "Task score",
    "cost": "Cost per request",
    "forgetting": "Forgetting",
    "tradeoff": "Trade-off",
    "loss": "Loss curves",
    "distill": "Student vs teacher",
    "importance": "Parameter importance",
}


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def _pts(x) -> str:
    return f"{x * 100:+.1f}"


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{x:,}" if isinstance(x, int) else f"{x:.{digits}f}"


def _mitigation(m: dict) -> str:
    parts = []
    if m.get("replay"):
        parts.append(f"replay {_pct(m['replay'])} ({m.get('replay_source', 'self')})")
    if m.get("kl"):
        parts.append(f"KL {m['kl']:g}")
    if m.get("l2sp"):
        parts.append(f"L2-SP {m['l2sp']:g}")
    if m.get("self_distill"):
        sd = m["self_distill"]
        parts.append(f"self-distillation {sd['weight']:g} ({sd['per_batch']} {sd['prompts']} prompts a batch)")
    if m.get("freeze_layers"):
        parts.append(f"lowest {m['freeze_layers']} layers frozen")
    return ", ".join(parts) or "none"


def _validation(v: dict) -> str:
    """What the method measured on validation besides loss: preference accuracy, reward, ..."""
    return ", ".join(f"{k.replace('_', ' ')} {_num(x)}" for k, x in v.items()) or "–"


def _ratio(x) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _plots(r: dict, *keys: str) -> list[tuple]:
    """The image blocks of those plots the report has."""
    return [("img", r["plots"][k], PLOT_TITLES[k]) for k in keys if k in r["plots"]]


def sections(r: dict) -> list[tuple]:
    """The report as blocks: ("h2", text) | ("p", text) | ("list", items) | ("table", head, rows) |
    ("img", path, alt)."""
    out: list[tuple] = _sweep(r["sweep"]) + _plots(r, "importance") if r.get("sweep") else []
    rec = r["recommendation"]
    out += [("h2", "Recommendation"), ("p", rec["text"])]
    if rec.get("details"):
        out.append(("list", rec["details"]))
    if r["task"]:
        out += _task_section(r["task"], r["primary"]) + _plots(r, "task", "cost")
    if r["forgetting"]:
        out += _forgetting_section(r["forgetting"]) + _plots(r, "forgetting", "tradeoff")
    for d in r.get("distill", []):
        out += _distill_section(d) + _plots(r, "distill")
    if r["training"]:
        out += _training_section(r["training"]) + _plots(r, "loss")
    out.append(("p", "Every number above is read from the JSON file named in its row; report.json holds them all."))
    return out


def _task_section(task: list[dict], primary: str) -> list[tuple]:
    priced = any(t.get("cost_per_1000") is not None for t in task)
    head = ["model", primary, "95% CI", "prompt tokens / request", "latency ms / request"]
    head += [*(["$ / 1,000 requests"] if priced else []), "test examples", "source"]
    rows = [
        [
            t["label"] + (" (endpoint)" if t["kind"] == "endpoint" else ""),
            _pct(t["score"]),
            f"{_pct(t['lo'])} – {_pct(t['hi'])}",
            "–" if t["prompt_tokens"] is None else f"{t['prompt_tokens']:.1f}",
            f"{t['latency_ms']:.1f}",
            *([_money(t.get("cost_per_1000"))] if priced else []),
            str(t["n"]),
            t["source"],
        ]
        for t in task
    ]
    return [("h2", "Task score: prompting the base model vs fine-tuning"), ("table", head, rows)]


def _forgetting_section(forgetting: list[dict]) -> list[tuple]:
    f0 = forgetting[0]
    out: list[tuple] = [
        ("h2", "Catastrophic forgetting: general capability, base vs tuned"),
        (
            "p",
            f"General QA: {f0['qa_items']} everyday questions (selected so that the bundled base model answers four "
            "in five right and one in five wrong, so gains show as well as losses), scored by whether the accepted "
            "answer appears in the reply. Drift: mean per-token NLL of each model on the base model's own greedy "
            f"replies to {f0['drift_prompts']} general prompts: a rise means the tuned model moved away from how "
            "the base model answers; training on such answers, as self-replay does, can bring it below the base. "
            "Intervals: paired bootstrap over items, 95%.",
        ),
    ]
    if "floor_qa" in f0:
        b1, b2 = f0["floor_batch_sizes"]
        out.append(
            (
                "p",
                f"Noise floor: the base model probed twice, at batch size {b1} and {b2}, answers "
                f"{f0['floor_qa_flipped']} of {f0['qa_items']} questions differently ({_pts(f0['floor_qa'])} points) "
                f"and its drift NLL differs by {f0['floor_drift']:.4f} nats/token: batching alone moves the probe "
                "this much. A QA change is called forgetting (or a gain) only when it lies beyond both its 95% "
                "interval and this floor, and no forgetting only when the interval rules out a drop larger than "
                "the floor; otherwise the verdict is inconclusive.",
            )
        )
    return out + [_forgetting_table(forgetting)]


def _forgetting_table(forgetting: list[dict]) -> tuple:
    head = ["model", "QA base", "QA tuned", "change (points, 95% CI)", "verdict", "retention"]
    head += ["drift NLL base", "drift NLL tuned", "drift increase (95% CI)"]
    with_text = all("text_base_ppl" in f for f in forgetting)
    if with_text:
        head += ["text ppl base", "text ppl tuned", "text NLL/token increase (95% CI)"]
    rows = []
    for f in forgetting:
        row = [
            f["label"],
            _pct(f["qa_base"]),
            _pct(f["qa_tuned"]),
            f"{_pts(f['qa_change'])} ({_pts(f['qa_change_lo'])} to {_pts(f['qa_change_hi'])})",
            f.get("verdict", "–"),
            _pct(f["retention"]),
            _num(f["drift_base"]),
            _num(f["drift_tuned"]),
            f"{f['drift_increase']:+.3f} ({f['drift_increase_lo']:+.3f} to {f['drift_increase_hi']:+.3f})",
        ]
        if with_text:
            increase = f"{f['text_nll_increase']:+.3f} ({f['text_nll_increase_lo']:+.3f} to "
            increase += f"{f['text_nll_increase_hi']:+.3f})"
            row += [_num(f["text_base_ppl"], 2), _num(f["text_tuned_ppl"], 2), increase]
        rows.append(row + [f["source"]])
    return ("table", head + ["source"], rows)


def _distill_section(d: dict) -> list[tuple]:
    t, st, ratio = d["teacher"], d["student"], d["ratios"]
    rows = [
        ["parameters", _num(t["parameters"]), _num(st["parameters"]), _ratio(ratio["parameters"])],
        [
            "weights on disk (MiB, fp32)",
            _num(t["weights_mib"], 1),
            _num(st["weights_mib"], 1),
            _ratio(ratio["weights"]),
        ],
        [
            "generation tokens/s (one request at a time)",
            _num(t["tokens_per_s"], 1),
            _num(st["tokens_per_s"], 1),
            _ratio(ratio["speed"]),
        ],
    ]
    if "task" in st:
        p = d["primary"]
        rows.append([f"task {p}", _pct(t["task"][p]["mean"]), _pct(st["task"][p]["mean"]), _ratio(ratio.get("task"))])
    qa = ["general QA", _pct(t["general_qa"]["mean"]), _pct(st["general_qa"]["mean"]), _ratio(ratio["general_qa"])]
    return [
        ("h2", f"Distilled student vs its teacher ({d['variant']})"),
        (
            "p",
            f"Teacher: {d['teacher_ref']}. Both measured on this machine the same way; speed over "
            f"{d['speed_prompts']} prompts of {d['speed_tokens']} new tokens each. Source: {d['source']}.",
        ),
        ("table", ["measure", "teacher", "student", "student / teacher"], [*rows, qa]),
    ]


def _training_section(training: list[dict]) -> list[tuple]:
    head = ["run", "method", "steps", "train seconds", "final loss", "val loss", "validation"]
    head += ["trainable parameters", "mitigation", "source"]
    rows = [
        [
            t["variant"],
            t.get("method") or "sft",
            _num(t["steps"]),
            _num(t["train_seconds"], 1),
            _num(t["final_loss"]),
            _num(t["val_loss"]),
            _validation(t.get("validation") or {}),
            _num(t["trainable_parameters"]),
            _mitigation(t["mitigation"]),
            t["source"],
        ]
        for t in training
    ]
    out: list[tuple] = [("h2", "Training"), ("table", head, rows)]
    notes = [_watched(t) for t in training if t.get("stopped_early") or t.get("best")]
    return out + ([("list", notes)] if notes else [])


def _money(x) -> str:
    return "–" if x is None else f"${x:.3f}" if x < 1 else f"${x:,.2f}"


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _sweep(s: dict) -> list[tuple]:
    """A sweep's trials, best first among the finished, then the pruned and failed."""
    names = list(s["space"])
    order = {"complete": 0, "pruned": 1, "fail": 2}
    best_first = -1 if s["direction"] == "maximize" else 1
    rows = sorted(s["trials"], key=lambda t: (order.get(t["state"], 3), best_first * (t["value"] or 0), t["trial"]))
    best = s.get("best")
    text = (
        f"{len(s['trials'])} trials ({s['sampler']} sampler, {s['pruner']} pruner), each scored on {s['metric']} "
        f"({'lower' if s['direction'] == 'minimize' else 'higher'} is better). "
    )
    text += (
        f"Best: trial {best['trial']} ({s['metric']} {best['value']:.4g}); its config is "
        f"{best['config'].rsplit('/', 1)[-1]} (tunesmith train it)."
        if best
        else "No trial finished."
    )
    out = [
        ("h2", "Sweep"),
        ("p", text),
        (
            "table",
            ["trial", "state", s["metric"], "steps", *names],
            [
                [
                    t["run"] or str(t["trial"]),
                    t["state"],
                    _value(t["value"]) if t["value"] is not None else "–",
                    _value(t["steps"]) if t["steps"] is not None else "–",
                    *[_value(t["params"].get(n, "–")) for n in names],
                ]
                for t in rows
            ],
        ),
    ]
    if s.get("importance"):
        out.append(
            (
                "p",
                "Parameter importance (Optuna, fANOVA over the finished trials): "
                + ", ".join(f"{k} {v:.2f}" for k, v in s["importance"].items())
                + ".",
            )
        )
    return out


def _watched(t: dict) -> str:
    """Why a run ended where it did and which weights are its final model."""
    parts = []
    if t.get("stopped_early"):
        parts.append(f"stopped early at step {t['stopped_early']['step']}: {t['stopped_early']['reason']}")
    if t.get("best"):
        b = t["best"]
        parts.append(
            f"the final model is step {b['step']}'s weights, the best {b['metric']} ({b['value']:.4g}) "
            "of the run's evaluations (output.keep_best)"
        )
    return f"{t['variant']}: " + "; ".join(parts)


def render_markdown(r: dict) -> str:
    lines = [f"# {r['title']}", ""]
    for block in sections(r):
        kind = block[0]
        if kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            head, rows = block[1], block[2]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows] + [""]
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
    return "\n".join(lines)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:1em 0}
h2{border-bottom:1px solid #ddd;padding-bottom:4px}"""

# Marks the page once every plot has loaded (or failed), so a headless browser can check it.
_CHECK = """<script>window.addEventListener('load',function(){var i=document.images,ok=0;
for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0)ok++;}
document.body.setAttribute('data-plots-loaded',ok+'/'+i.length);});</script>"""


def render_html(r: dict) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta "
        f"charset='utf-8'><title>{e(r['title'])}</title><style>{_STYLE}</style></head>",
        f"<body><h1>{e(r['title'])}</h1>",
    ]
    for block in sections(r):
        kind = block[0]
        if kind == "h2":
            parts.append(f"<h2>{e(block[1])}</h2>")
        elif kind == "p":
            parts.append(f"<p>{e(block[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            parts.append(
                f"<figure><img src='{e(block[1])}' alt='{e(block[2])}'><figcaption>{e(block[2])}</figcaption></figure>"
            )
    parts.append(_CHECK + "</body></html>")
    return "\n".join(parts)
