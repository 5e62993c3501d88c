"""The students side by side (SFT, SFT on the teacher's replies, logit KD, on-policy with the teacher
loaded and behind an endpoint) and the forgetting levers, from the runs' own JSON files.

    python summary.py work/runs [--seconds S] [--record]

Prints the comparison; with --record also writes it, with the commit, versions and machine it
came from, to results/distill-<machine>.json, which README's and docs' tables are rendered from.
"""

import argparse
import json
from pathlib import Path

import yaml
from tunesmith.eval.bootstrap import paired_bootstrap_ci
from tunesmith.provenance import write_results

RESULTS = Path(__file__).resolve().parent.parent.parent / "results"
# run name -> what it is; every student makes the same number of updates
STUDENTS = {
    "student-sft": "plain SFT on the data",
    "student-seqkd": "SFT on the teacher's replies (sequence-level)",
    "student-distill": "logit KD (forward KL, 10% cross-entropy)",
    "student-onpolicy": "on-policy, reverse KL (teacher loaded)",
    "student-onpolicy-endpoint": "on-policy, reverse KL (teacher behind tunesmith serve)",
}
FORGETTING = {"lora": "LoRA", "lora-replay": "LoRA + 25% self-replay",
              "lora-self-distill": "LoRA + on-policy self-distillation"}


def read(path: Path):
    return json.loads(path.read_text())


def per_example(run_dir: Path) -> list[float]:
    lines = (run_dir / "eval" / "test_predictions.jsonl").read_text().splitlines()
    return [json.loads(line)["exact_match"] for line in lines]


def exact_match(run_dir: Path) -> dict:
    s = read(run_dir / "eval" / "test.json")
    return {**s["scores"]["exact_match"], "n": s["n"]}


def student_row(runs: Path, name: str, sft_scores: list[float]) -> dict:
    run = runs / name
    summary = read(run / "summary.json")
    row = {"label": STUDENTS[name], "exact_match": exact_match(run), "steps": summary["steps"],
           "train_minutes": summary["train_seconds"] / 60,
           "general_qa": read(run / "forgetting" / "summary.json")["qa"]["tuned"]}
    start = Path(yaml.safe_load((run / "config.yaml").read_text())["model"])
    if start.name == "final":  # started from another run (a warm start): its steps and time count too
        w = read(start.parent / "summary.json")
        row.update(warm_start={"run": start.parent.name, "steps": w["steps"], "train_minutes": w["train_seconds"] / 60},
                   steps=row["steps"] + w["steps"], train_minutes=row["train_minutes"] + w["train_seconds"] / 60)
    if name != "student-sft":
        row["minus_sft"] = paired_bootstrap_ci(sft_scores, per_example(run))
    if (run / "samples.jsonl").exists() and (run / "samples.jsonl").stat().st_size:
        row["token_log"] = token_log(run)
    if isinstance(summary.get("distill"), dict) and "tokens_scored" in summary["distill"]:
        row["endpoint"] = summary["distill"]
    return row


def token_log(run_dir: Path, positions: int = 11) -> dict:
    """What samples.jsonl shows, per logged step: the mean loss (divergence) per sampled token, the
    share of sampled tokens the teacher gives less than 10%, and the mean loss at each reply position."""
    steps: dict[int, list[dict]] = {}
    for line in (run_dir / "samples.jsonl").read_text().splitlines():
        r = json.loads(line)
        steps.setdefault(r["step"], []).append(r)
    out = {}
    for step, rows in sorted(steps.items()):
        losses = [v for r in rows for v in r["loss"]]
        by_position = [[r["loss"][i] for r in rows if len(r["loss"]) > i] for i in range(positions)]
        unlikely = sum(t < -2.302585 for r in rows for t in r["teacher_logprob"])  # log 0.1
        out[step] = {"replies": len(rows), "tokens": len(losses), "mean_loss": sum(losses) / max(1, len(losses)),
                     "teacher_below_10pct": unlikely / max(1, len(losses)),
                     "loss_by_position": [sum(v) / len(v) if v else None for v in by_position]}
    return out


def forgetting_rows(compare_dir: Path) -> dict:
    out = {}
    for name, label in FORGETTING.items():
        run = compare_dir / "variants" / name
        if not run.exists():
            continue
        qa = read(run / "forgetting" / "summary.json")["qa"]
        summary = read(run / "summary.json")
        out[name] = {"label": label, "exact_match": exact_match(run), "qa_base": qa["base"], "qa_tuned": qa["tuned"],
                     "qa_change": qa["change"], "verdict": qa.get("verdict"),
                     "train_minutes": summary["train_seconds"] / 60, "mitigation": summary["mitigation"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="?", default=Path("work/runs"))
    ap.add_argument("--seconds", type=float, help="the whole example's wall-clock time, recorded with the results")
    ap.add_argument("--record", action="store_true", help="write results/distill-<machine>.json")
    args = ap.parse_args()
    runs = args.runs
    d = read(runs / "student-distill" / "eval" / "distill.json")  # the student next to its teacher, this machine
    sft_scores = per_example(runs / "student-sft")
    students = {name: student_row(runs, name, sft_scores) for name in STUDENTS if (runs / name).exists()}
    teacher = {"parameters": d["teacher"]["parameters"], "exact_match": exact_match(runs / "teacher"),
               "tokens_per_s": d["teacher"]["tokens_per_s"], "general_qa": d["teacher"]["general_qa"],
               "steps": read(runs / "teacher" / "summary.json")["steps"]}
    table = {"teacher": teacher, "students": students, "student_parameters": d["student"]["parameters"],
             "student_tokens_per_s": d["student"]["tokens_per_s"], "speed_ratio": d["ratios"]["speed"],
             "forgetting": forgetting_rows(runs / "dates-forgetting")}
    best = max((s for n, s in students.items() if n.startswith("student-onpolicy")), default=None,
               key=lambda s: s["exact_match"]["mean"])
    if best is not None:
        table["goals"] = {
            "on_policy_vs_sft": {"goal": "at least +5 points, interval's lower end above 0",
                                 "met": best["minus_sft"]["mean"] >= 0.05 and best["minus_sft"]["lo"] > 0},
            "on_policy_vs_teacher": {"goal": "within 5 points of the teacher",
                                     "met": teacher["exact_match"]["mean"] - best["exact_match"]["mean"] <= 0.05}}

    e = teacher["exact_match"]
    print(f"teacher ({teacher['parameters'] / 1e6:.1f}M): exact match {e['mean']:.1%} ({e['lo']:.1%}-{e['hi']:.1%})")
    for name, s in students.items():
        e, gap = s["exact_match"], s.get("minus_sft")
        vs = f"; vs SFT {gap['mean'] * 100:+.1f} ({gap['lo'] * 100:+.1f} to {gap['hi'] * 100:+.1f})" if gap else ""
        print(f"{s['label']}: {e['mean']:.1%} ({e['lo']:.1%}-{e['hi']:.1%}){vs}; general QA "
              f"{s['general_qa']['mean']:.1%}; {s['train_minutes']:.1f} min training")
    for name, f in table["forgetting"].items():
        print(f"{f['label']}: task {f['exact_match']['mean']:.1%}, general QA {f['qa_base']['mean']:.1%} -> "
              f"{f['qa_tuned']['mean']:.1%}; {f['train_minutes']:.1f} min training")
    if args.record:
        print(f"recorded in {write_results(RESULTS, 'distill', table, args.seconds)}")


if __name__ == "__main__":
    main()
