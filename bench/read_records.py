"""What reading a plain messages file costs now, against an earlier commit's reader, side by side.

    .venv/bin/python bench/read_records.py [--baseline f5780b2] [--records 10000] [--repeats 7]

Writes 10,000 chat records in OpenAI's messages layout (system, user, assistant; plain string
contents, no reasoning, no tools: the file most users have), then reads and validates the file
with `data.records.load_source` (no tokenizer: the layout work alone) in two fresh interpreters,
one importing this tree's tunesmith and one the baseline commit's (`git archive` into a temporary
folder), alternating, --repeats times each. The ratio of the medians is the slowdown. Writes
bench/results/read-records-<machine>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from machine import machine, machine_tag, provenance

ROOT = Path(__file__).resolve().parent.parent
TIMED = """
import sys, time
from tunesmith.data.records import load_source
t0 = time.perf_counter()
loaded = load_source(sys.argv[1])
print(time.perf_counter() - t0, len(loaded.examples))
"""
WORDS = "the contract was signed on a monday in march invoice due date her last day at the firm".split()


def write_records(path: Path, n: int) -> None:
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60)))
            a = f"{rng.randint(1900, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "Answer with an ISO date."},
                            {"role": "user", "content": q},
                            {"role": "assistant", "content": a},
                        ]
                    }
                )
                + "\n"
            )


def baseline_tree(commit: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "src/tunesmith"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def read_once(src: Path, data: Path) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", TIMED, str(data)],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="f5780b2")
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    seconds = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "messages.jsonl"
        write_records(data, args.records)
        trees = {"baseline": baseline_tree(args.baseline, Path(tmp) / "baseline"), "current": ROOT / "src"}
        for i in range(args.repeats):
            for kind in ("baseline", "current"):
                s, n = read_once(trees[kind], data)
                assert n == args.records, (kind, n)
                seconds[kind].append(s)
                print(kind, i, f"{s:.3f} s", flush=True)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    result = {
        "machine": machine(),
        "provenance": provenance(),
        "baseline": args.baseline,
        "records": args.records,
        "repeats": args.repeats,
        "seconds": seconds,
        "median_seconds": median,
        "slowdown": median["current"] / median["baseline"] - 1,
    }
    out = args.out or ROOT / "bench" / "results" / f"read-records-{machine_tag()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.records} records: {median['baseline']:.3f} s at {args.baseline}, {median['current']:.3f} s now "
        f"({result['slowdown']:+.1%}); {out}"
    )


if __name__ == "__main__":
    main()
