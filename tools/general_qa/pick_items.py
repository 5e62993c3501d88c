"""Select the forgetting probe's general-QA items from candidates.jsonl by what the base model does.

    .venv/bin/python tools/general_qa/pick_items.py [--model smollm2-135m-instruct] [--wrong-share 0.2]

The bundled base model answers every candidate in each precision a run may use (bf16, fp32) and
at two batch sizes (the probe's 32, and 8: other padding, other rounding), with the probe's own
prompt, generation settings and tolerant scoring (`forgetting/probe.py`). A candidate it answers
right in every one of these runs is *known*: losing it is forgetting. One it answers wrong in
every run is *unknown*: gaining it shows improvement. Candidates that flip with precision or
batching are left out, since their change would be noise. The probe keeps every known item and
enough unknown ones to be `--wrong-share` of the set, one unknown after every four known so that
a prefix (`forgetting.probe_limit`) keeps the share. Writes src/tunesmith/forgetting/
general_qa.jsonl and, next to this script, selection.json: what each run answered, the counts,
and the provenance (commit, machine, versions).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROBE_FILE = ROOT / "src" / "tunesmith" / "forgetting" / "general_qa.jsonl"
RUNS = [("bf16", 32), ("bf16", 8), ("fp32", 32), ("fp32", 8)]


def answer_all(model_ref: str, items: list[dict]) -> dict[str, list[float]]:
    """Correctness of every item in each (precision, batch size) run."""
    from tunesmith.eval.metrics import contains_answer
    from tunesmith.forgetting.probe import qa_answers
    from tunesmith.model.load import load_for_inference

    out = {}
    for precision in dict.fromkeys(p for p, _ in RUNS):
        model, tokenizer = load_for_inference(
            model_ref, dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
        )
        for p, batch in RUNS:
            if p == precision:
                answers = qa_answers(model, tokenizer, items, batch_size=batch)
                out[f"{p}-batch{batch}"] = [contains_answer(a, q["answers"]) for a, q in zip(answers, items)]
                print(f"{p}, batch {batch}: {sum(out[f'{p}-batch{batch}']):.0f} of {len(items)} right", file=sys.stderr)
    return out


def interleave(known: list[dict], unknown: list[dict], every: int) -> list[dict]:
    """One unknown item after every `every` known ones, the rest of either list at the end."""
    out, u = [], iter(unknown)
    for i, item in enumerate(known, 1):
        out.append(item)
        if i % every == 0:
            nxt = next(u, None)
            if nxt is not None:
                out.append(nxt)
    return out + list(u)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--candidates", type=Path, default=HERE / "candidates.jsonl")
    ap.add_argument("--wrong-share", type=float, default=0.2, help="share of the probe the base model gets wrong")
    ap.add_argument("--out", type=Path, default=PROBE_FILE)
    args = ap.parse_args()
    from tunesmith.provenance import provenance

    candidates = [json.loads(line) for line in args.candidates.read_text().splitlines() if line.strip()]
    runs = answer_all(args.model, candidates)
    right = [all(r[i] for r in runs.values()) for i in range(len(candidates))]
    wrong = [not any(r[i] for r in runs.values()) for i in range(len(candidates))]
    known = [{**q, "base": "right"} for q, ok in zip(candidates, right) if ok]
    n_unknown = round(len(known) * args.wrong_share / (1 - args.wrong_share))
    pool = [{**q, "base": "wrong"} for q, bad in zip(candidates, wrong) if bad]
    if len(pool) < n_unknown:
        sys.exit(
            f"{args.candidates}: only {len(pool)} candidates the base model gets wrong every time; "
            f"{n_unknown} needed for a share of {args.wrong_share}: add harder questions"
        )
    chosen = interleave(known, pool[:n_unknown], every=round((1 - args.wrong_share) / args.wrong_share))
    args.out.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in chosen))
    record = {
        **provenance(),
        "model": args.model,
        "candidates": len(candidates),
        "runs": list(runs),
        "known": len(known),
        "unknown": n_unknown,
        "unknown_available": len(pool),
        "unstable": len(candidates) - sum(right) - sum(wrong),
        "per_candidate": [
            {"question": q["question"], **{k: r[i] for k, r in runs.items()}} for i, q in enumerate(candidates)
        ],
    }
    (HERE / "selection.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(
        f"{args.out}: {len(known)} known and {n_unknown} unknown of {len(candidates)} candidates "
        f"({record['unstable']} left out: right in some runs, wrong in others)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
