"""What each stage of the example measured, from the runs' own JSON files.

    python summary.py work/runs [--seconds S] [--record]

Prints one row per stage; with --record also writes them, with the commit, versions and machine
they came from, to results/rlhf-<machine>.json, which README's table is rendered from.
"""

import argparse
import json
from pathlib import Path

from tunesmith.provenance import write_results

RESULTS = Path(__file__).resolve().parent.parent.parent / "results"
STAGES = ("sft", "reward", "grpo", "dpo")


def read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def stage(run: Path) -> dict:
    summary = read(run / "summary.json") or {}
    test = read(run / "eval" / "test.json")
    forgetting = read(run / "forgetting" / "summary.json")
    v = summary.get("validation", {})
    row = {"steps": summary.get("steps")}
    if test:
        row["exact_match"] = {**test["scores"]["exact_match"], "n": test["n"]}
    if "accuracy" in v:
        row["preference_accuracy"] = v["accuracy"]
    if "reward" in v:
        row["mean_reward"] = v["reward"]
    if forgetting:
        q = forgetting["qa"]
        row["general_qa"] = {"base": q["base"]["mean"], "tuned": q["tuned"]["mean"], "items": q["base"]["n"],
                             "change": q["change"], "verdict": q.get("verdict"),
                             "floor": forgetting.get("floor", {}).get("qa")}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="?", default=Path("work/runs"))
    ap.add_argument("--seconds", type=float, help="the whole example's wall-clock time, recorded with the results")
    ap.add_argument("--record", action="store_true", help="write results/rlhf-<machine>.json")
    args = ap.parse_args()
    table = {name: stage(args.runs / name) for name in STAGES}
    print(f"{'stage':8} {'exact match (test)':>20} {'preference accuracy (val)':>26} {'mean reward (val)':>18} "
          f"{'general QA':>16}")
    for name, row in table.items():
        em = f"{row['exact_match']['mean']:.1%}" if "exact_match" in row else "-"
        acc = f"{row['preference_accuracy']:.1%}" if "preference_accuracy" in row else "-"
        reward = f"{row['mean_reward']:.3f}" if "mean_reward" in row else "-"
        qa = f"{row['general_qa']['base']:.1%} -> {row['general_qa']['tuned']:.1%}" if "general_qa" in row else "-"
        print(f"{name:8} {em:>20} {acc:>26} {reward:>18} {qa:>16}")
    print("General QA is measured against each run's starting model: the bundled model for sft, the SFT model after it.")
    if args.record:
        print(f"recorded in {write_results(RESULTS, 'rlhf', table, args.seconds)}")


if __name__ == "__main__":
    main()
