"""The example's three tables from its own files: interpolation next to replay (the compare
report), the merges (merges.json), the rebase's parity (parity.json).

    python summary.py work [--seconds S] [--record]

With --record also writes them, with the commit, versions and machine they came from, to
results/weight-space-<machine>.json, which README's tables are rendered from.
"""

import argparse
import json
from pathlib import Path

from tunesmith.provenance import write_results

RESULTS = Path(__file__).resolve().parent.parent.parent / "results"


def read(path: Path):
    return json.loads(path.read_text())


def interpolation(work: Path) -> dict:
    report = read(work / "runs" / "dates" / "report.json")
    kept = {r["variant"]: r for r in report["forgetting"]}
    rows = []
    for r in report["task"]:
        f = kept.get(r.get("variant"))
        rows.append({"label": r["label"], "kind": r["kind"], "alpha": r.get("interpolation", {}).get("alpha"),
                     "task": {"mean": r["score"], "lo": r["lo"], "hi": r["hi"]},
                     "general_qa": None if f is None else {"mean": f["qa_tuned"], "lo": f["qa_tuned_lo"], "hi": f["qa_tuned_hi"]},
                     "qa_base": None if f is None else f["qa_base"]})
    notes = [d for d in report["recommendation"].get("details", []) if d.startswith("Interpolation")]
    return {"rows": rows, "notes": notes, "recommendation": report["recommendation"]["text"],
            "recommended_variant": report["recommendation"].get("recommended_variant")}


def merges(work: Path) -> dict:
    data = read(work / "merges.json")
    return {label: {"dates": r["tasks"]["dates"], "tools": r["tasks"]["tools"], "general_qa": r["forgetting"]["tuned"],
                    "qa_base": r["forgetting"]["base"]["mean"]} for label, r in data.items()}


def rebase(work: Path) -> dict:
    new = work / "runs" / "dates" / "variants" / "dates-on-gemma"
    parity, summary = read(new / "parity.json"), read(new / "summary.json")
    old_preds = [json.loads(line)["prediction"] for line in
                 (work / "runs" / "dates" / "variants" / "lora" / "eval" / "test_predictions.jsonl").read_text().splitlines()]
    new_preds = [json.loads(line)["prediction"] for line in (new / "eval" / "test_predictions.jsonl").read_text().splitlines()]
    return {"old": "bundled SmolLM2-135M-Instruct + dates LoRA", "new_base": "gemma3-270m", "parity": parity,
            "steps": summary["steps"], "train_seconds": summary["train_seconds"],
            "same_replies": sum(a == b for a, b in zip(old_preds, new_preds)), "test_prompts": len(old_preds),
            "new_base_qa": read(new / "forgetting" / "summary.json")["qa"]["base"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path, nargs="?", default=Path("work"))
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    table = {"interpolation": interpolation(args.work), "merges": merges(args.work), "rebase": rebase(args.work)}
    print(json.dumps(table, indent=1))
    if args.record:
        print(f"recorded in {write_results(RESULTS, 'weight-space', table, args.seconds)}")


if __name__ == "__main__":
    main()
