"""Distilled student vs the SFT student vs the teacher, from the runs' own JSON files."""

import json
import sys
from pathlib import Path

runs = Path(sys.argv[1] if len(sys.argv) > 1 else "work/runs")


def read(path: Path):
    return json.loads(path.read_text())


def em(run: str) -> str:
    s = read(runs / run / "eval" / "test.json")["scores"]["exact_match"]
    return f"{s['mean']:.1%} ({s['lo']:.1%}-{s['hi']:.1%})"


d = read(runs / "student-distill" / "eval" / "distill.json")
print(f"teacher (30 layers, {d['teacher']['parameters'] / 1e6:.1f}M parameters): exact match {em('teacher')}")
print(f"student, distilled ({d['student']['parameters'] / 1e6:.1f}M): exact match {em('student-distill')}")
print(f"student, plain SFT, same data and steps:  exact match {em('student-sft')}")
from tunesmith.eval.bootstrap import paired_bootstrap_ci  # noqa: E402


def per_example(run: str) -> list[float]:
    lines = (runs / run / "eval" / "test_predictions.jsonl").read_text().splitlines()
    return [json.loads(line)["exact_match"] for line in lines]


gap = paired_bootstrap_ci(per_example("student-sft"), per_example("student-distill"))
print(f"distilled - SFT, paired over the same test examples: {gap['mean'] * 100:+.1f} points "
      f"(95% CI {gap['lo'] * 100:+.1f} to {gap['hi'] * 100:+.1f})")
r = d["ratios"]
print(f"student / teacher: parameters {r['parameters']:.2f}x, weights {r['weights']:.2f}x, "
      f"generation speed {r['speed']:.2f}x ({d['student']['tokens_per_s']:.1f} vs {d['teacher']['tokens_per_s']:.1f} tokens/s), "
      f"general QA {d['student']['general_qa']['mean']:.1%} vs {d['teacher']['general_qa']['mean']:.1%}")
print(f"report: {runs / 'student-distill' / 'report.html'}")
