"""What scoring during training costs: the quickstart's LoRA run (bundled model, dates task, 40
steps) with and without `eval.generate_every`, side by side in one process.

    .venv/bin/python bench/watched.py [--repeats 3] [--every 10] [--limit 32]

`with` generates replies for the first --limit validation examples every --every steps (greedy,
batched, KV cache, the quickstart's 16 new tokens) and scores them; `without` measures only the
validation loss at the end, as the quickstart does. The two alternate, --repeats times each;
the medians of their training seconds give the overhead. Writes
bench/results/watched-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from machine import machine, machine_tag, provenance

from tunesmith.config import validate_config
from tunesmith.quickstart import quickstart_config
from tunesmith.run import train
from tunesmith.tasks.dates import write_splits


def run_once(work: Path, name: str, every: int | None, limit: int) -> dict:
    tree = quickstart_config(work, name, "smollm2-135m-instruct", 40, None)
    tree["eval"] = {
        "every": 50,
        "max_new_tokens": 16,
        **({"generate_every": every, "generate_limit": limit} if every else {}),
    }
    tree["forgetting"] = {}
    tree.pop("compare")
    summary = train(validate_config(tree, "bench"), quiet=True)
    lines = [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    return {
        "train_seconds": summary["train_seconds"],
        "evaluations": sum("val_exact_match" in r for r in lines),
        "val_exact_match": [r["val_exact_match"] for r in lines if "val_exact_match" in r],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_splits(work / "data", n_test=100)
        for i in range(args.repeats):
            for kind in ("without", "with"):
                runs[kind].append(run_once(work, f"{kind}-{i}", args.every if kind == "with" else None, args.limit))
                print(kind, i, runs[kind][-1]["train_seconds"], flush=True)
    median = {k: statistics.median(r["train_seconds"] for r in v) for k, v in runs.items()}
    evaluations = runs["with"][0]["evaluations"]
    result = {
        "machine": machine(),
        "provenance": provenance(),
        "steps": 40,
        "every": args.every,
        "limit": args.limit,
        "repeats": args.repeats,
        "runs": runs,
        "median_train_seconds": median,
        "overhead": median["with"] / median["without"] - 1,
        "evaluations": evaluations,
        "seconds_per_evaluation": (median["with"] - median["without"]) / evaluations,
    }
    out = args.out or Path(__file__).resolve().parent / "results" / f"watched-{machine_tag()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(
        f"overhead {result['overhead']:+.1%}, {result['seconds_per_evaluation']:.1f} s per evaluation of "
        f"{args.limit} examples ({evaluations} evaluations)"
    )


if __name__ == "__main__":
    main()
