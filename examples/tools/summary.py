"""The base model prompted with the tools vs LoRA (and LoRA with replay), on the calls, from the compare run's own files.

    python summary.py work/runs/tools [--seconds S] [--record]

Prints the comparison; with --record also writes it, with the commit, versions and machine it
came from, to results/tools-<machine>.json, which README's table is rendered from.
"""

import argparse
import json
from pathlib import Path

from tunesmith.eval.bootstrap import paired_bootstrap_ci
from tunesmith.provenance import write_results

RESULTS = Path(__file__).resolve().parent.parent.parent / "results"
METRICS = ("tool_call_exact", "tool_call_rate", "tool_name_accuracy", "tool_args_schema_valid", "tool_argument_accuracy",
           "tool_abstention")


def read(path: Path):
    return json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?", default=Path("work/runs/tools"))
    ap.add_argument("--seconds", type=float, help="the whole example's wall-clock time, recorded with the results")
    ap.add_argument("--record", action="store_true", help="write results/tools-<machine>.json")
    args = ap.parse_args()
    variants = sorted(p.name for p in (args.run / "variants").iterdir() if (p / "eval" / "test.json").is_file())
    sources = {"zero-shot": args.run / "baselines" / "shots-0.json", "3-shot": args.run / "baselines" / "shots-3.json",
               **{v: args.run / "variants" / v / "eval" / "test.json" for v in variants}}
    rows = {}
    for label, path in sources.items():
        result = read(path)
        rows[label] = {"scores": {m: result["scores"][m] for m in METRICS if m in result["scores"]},
                       "n": result["n"], "prompt_tokens": result["prompt_tokens"], "latency_s": result["latency_s"]}

    def per_example(path: Path) -> list[float]:
        lines = (path.parent / read(path)["predictions"]).read_text().splitlines()
        return [json.loads(line).get("tool_call_exact") for line in lines]

    base, tuned = per_example(sources["zero-shot"]), per_example(sources["lora"])
    pairs = [(b, t) for b, t in zip(base, tuned) if b is not None and t is not None]
    report = read(args.run / "report.json")["forgetting"]
    general_qa = {r["variant"]: {k: r[k] for k in ("qa_base", "qa_tuned", "qa_change", "qa_change_lo", "qa_change_hi",
                                                    "qa_items", "verdict")} for r in report if r["variant"] in variants}
    table = {"rows": rows, "lora_minus_zero_shot": paired_bootstrap_ci([b for b, _ in pairs], [t for _, t in pairs]),
             "general_qa": general_qa, "steps": read(args.run / "variants" / "lora" / "summary.json")["steps"],
             "replay": read(args.run / "variants" / variants[-1] / "summary.json")["mitigation"]["replay"]}
    for label, row in rows.items():
        s = row["scores"]["tool_call_exact"]
        print(f"{label}: calls exactly right {s['mean']:.1%} ({s['lo']:.1%}-{s['hi']:.1%}) of {s['n']}; "
              + ", ".join(f"{m} {row['scores'][m]['mean']:.1%}" for m in METRICS[1:] if m in row["scores"]))
    gap = table["lora_minus_zero_shot"]
    print(f"LoRA - zero-shot, paired: {gap['mean'] * 100:+.1f} points (95% CI {gap['lo'] * 100:+.1f} to {gap['hi'] * 100:+.1f})")
    for variant, q in table["general_qa"].items():
        print(f"{variant}: general QA {q['qa_base']:.1%} -> {q['qa_tuned']:.1%} ({q['verdict']})")
    if args.record:
        print(f"recorded in {write_results(RESULTS, 'tools', table, args.seconds)}")


if __name__ == "__main__":
    main()
