"""Distilled student vs the SFT student vs the teacher, from the runs' own JSON files.

    python summary.py work/runs [--seconds S] [--record]

Prints the comparison; with --record also writes it, with the commit, versions and machine it
came from, to results/distill-<machine>.json, which README's table is rendered from.
"""

import argparse
import json
from pathlib import Path

from tunesmith.eval.bootstrap import paired_bootstrap_ci
from tunesmith.provenance import write_results

RESULTS = Path(__file__).resolve().parent.parent.parent / "results"


def read(path: Path):
    return json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="?", default=Path("work/runs"))
    ap.add_argument("--seconds", type=float, help="the whole example's wall-clock time, recorded with the results")
    ap.add_argument("--record", action="store_true", help="write results/distill-<machine>.json")
    args = ap.parse_args()
    runs = args.runs

    def em(run: str) -> dict:
        s = read(runs / run / "eval" / "test.json")
        return {**s["scores"]["exact_match"], "n": s["n"]}

    def per_example(run: str) -> list[float]:
        lines = (runs / run / "eval" / "test_predictions.jsonl").read_text().splitlines()
        return [json.loads(line)["exact_match"] for line in lines]

    d = read(runs / "student-distill" / "eval" / "distill.json")
    table = {
        "teacher": {"parameters": d["teacher"]["parameters"], "exact_match": em("teacher"),
                    "tokens_per_s": d["teacher"]["tokens_per_s"], "general_qa": d["teacher"]["general_qa"]},
        "distilled": {"parameters": d["student"]["parameters"], "exact_match": em("student-distill"),
                      "tokens_per_s": d["student"]["tokens_per_s"], "general_qa": d["student"]["general_qa"]},
        "sft": {"parameters": d["student"]["parameters"], "exact_match": em("student-sft")},
        "distilled_minus_sft": paired_bootstrap_ci(per_example("student-sft"), per_example("student-distill")),
        "speed_ratio": d["ratios"]["speed"],
        "steps": {run: read(runs / run / "summary.json")["steps"] for run in ("teacher", "student-distill", "student-sft")},
    }
    for name, label in (("teacher", "teacher"), ("distilled", "student, distilled"), ("sft", "student, plain SFT")):
        t = table[name]
        e = t["exact_match"]
        print(f"{label} ({t['parameters'] / 1e6:.1f}M parameters): exact match {e['mean']:.1%} ({e['lo']:.1%}-{e['hi']:.1%})")
    gap = table["distilled_minus_sft"]
    print(f"distilled - SFT, paired over the same test examples: {gap['mean'] * 100:+.1f} points "
          f"(95% CI {gap['lo'] * 100:+.1f} to {gap['hi'] * 100:+.1f})")
    print(f"student / teacher generation speed {table['speed_ratio']:.2f}x; general QA "
          f"{table['distilled']['general_qa']['mean']:.1%} vs {table['teacher']['general_qa']['mean']:.1%}")
    print(f"report: {runs / 'student-distill' / 'report.html'}")
    if args.record:
        print(f"recorded in {write_results(RESULTS, 'distill', table, args.seconds)}")


if __name__ == "__main__":
    main()
