"""What each stage of the example measured, from the runs' own JSON files."""

import json
import sys
from pathlib import Path

runs = Path(sys.argv[1] if len(sys.argv) > 1 else "work/runs")


def read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


print(f"{'stage':8} {'exact match (test)':>20} {'preference accuracy (val)':>26} {'mean reward (val)':>18} "
      f"{'general QA kept':>16}  report")
for stage in ("sft", "reward", "grpo", "dpo"):
    run = runs / stage
    summary = read(run / "summary.json") or {}
    test = read(run / "eval" / "test.json")
    forgetting = read(run / "forgetting" / "summary.json")
    v = summary.get("validation", {})
    em = f"{test['scores']['exact_match']['mean']:.1%}" if test else "-"
    acc = f"{v['accuracy']:.1%}" if "accuracy" in v else "-"
    reward = f"{v['reward']:.3f}" if "reward" in v else "-"
    qa = f"{forgetting['qa']['tuned']['mean']:.1%} of {forgetting['qa']['base']['mean']:.1%}" if forgetting else "-"
    report = run / "report.html"
    print(f"{stage:8} {em:>20} {acc:>26} {reward:>18} {qa:>16}  {report if report.is_file() else '-'}")
print("General QA is measured against each run's starting model: the bundled model for sft, the SFT model after it.")
