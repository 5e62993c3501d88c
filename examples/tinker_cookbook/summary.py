"""What tinker-cookbook's recipes did against `tunesmith service`, from their own logs.

    python summary.py WORKDIR [--record --started EPOCH_SECONDS]

Reads each run's metrics.jsonl (written by the cookbook's ml_log) and evaluate.py's
before/after measurements; with --record writes results/tinker-cookbook-<machine>.json.
"""

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent.parent / "results"


def steps(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def settings(log_dir: Path) -> dict:
    """The recipe's configuration as it ran (its own config.json), less the machine-specific paths."""
    config = json.loads((log_dir / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in ("base_url", "log_path", "wandb_project", "wandb_name")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--started", type=float)
    args = ap.parse_args()
    sl, warmup, rl = (steps(args.work / name) for name in ("sl", "sl-warmup", "rl"))
    measured = json.loads((args.work / "evaluation.json").read_text())
    table = {
        "sl_loop": {"config": settings(args.work / "sl"), "steps": len(sl),
                    "sequences_per_step": sl[0]["num_sequences"],
                    "train_nll_per_step": [round(s["train_mean_nll"], 4) for s in sl],
                    "seconds_per_step": round(sorted(s["time_total"] for s in sl)[len(sl) // 2], 2),
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in measured["sl_loop"].items()}},
        "warmup": {"config": settings(args.work / "sl-warmup"), "steps": len(warmup),
                   "train_nll_per_step": [round(s["train_mean_nll"], 4) for s in warmup]},
        "rl_loop": {"config": settings(args.work / "rl"), "steps": len(rl),
                    "trained_steps": sum("grad_norm:mean" in s for s in rl),
                    "sampled_reward_per_step": [round(s["reward/total"], 3) for s in rl],
                    "seconds_per_step": round(sorted(s["time/total"] for s in rl)[len(rl) // 2], 1),
                    **measured["rl_loop"]},
    }
    s, r = table["sl_loop"], table["rl_loop"]
    print(f"sl_loop: {s['steps']} steps of {s['sequences_per_step']} conversations, {s['seconds_per_step']} s a step; "
          f"mean NLL of the {s['conversations']} conversations' assistant tokens {s['nll_base']:.3f} (base) -> "
          f"{s['nll_tuned']:.3f} (tuned)")
    print(f"rl_loop: {r['steps']} steps ({r['trained_steps']} with a training step), {r['seconds_per_step']} s a step; "
          f"reward per step while training {r['sampled_reward_per_step']}")
    for kind in ("greedy", "sampled"):
        print(f"  {kind} reward on {r['questions']} unseen date questions: {r['reward_before'][kind]:.3f} before RL -> "
              f"{r['reward_after'][kind]:.3f} after")
    if args.record:
        from tunesmith.provenance import write_results

        seconds = time.time() - args.started if args.started else None
        print(f"recorded in {write_results(RESULTS, 'tinker-cookbook', table, seconds)}")


if __name__ == "__main__":
    main()
