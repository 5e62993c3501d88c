"""What `train.return_memory` (glibc's mmap threshold fixed, `runtime/memory.py`) saves and costs.

The same runs as `bench/adapters.py` (bundled model, quickstart data, same steps), with the
option on and off, each in a fresh process; on/off alternate so that a slow spell of a shared
machine falls on both. Run from the repository root:

    .venv/bin/python bench/memory.py [--steps 15] [--types lora,qlora-nf4] [--repeats 3] [--out FILE]

writes bench/results/memory-<machine tag>.json by default (see adapters.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from adapters import machine, machine_tag, measure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--types", default="lora,qlora-nf4,full")
    ap.add_argument(
        "--repeats", type=int, default=3, help="fresh processes per setting; the median peak RSS is reported"
    )
    ap.add_argument("--out", type=Path, help="default: bench/results/memory-<machine tag>.json")
    args = ap.parse_args()
    args.out = args.out or Path(f"bench/results/memory-{machine_tag()}.json")
    rows = []
    for name in args.types.split(","):
        on = measure(name, args.steps, {"return_memory": True}, args.repeats)
        off = measure(name, args.steps, {"return_memory": False}, args.repeats)
        rows.append(
            {
                "type": name,
                "on": on,
                "off": off,
                "peak_rss_ratio": on["peak_rss_mib"] / off["peak_rss_mib"],
                "tokens_per_s_ratio": on["tokens_per_s"] / off["tokens_per_s"],
            }
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": machine(), "steps": args.steps, "repeats": args.repeats, "rows": rows}, indent=2)
    )
    print("| type | peak RSS off (MiB) | on (MiB) | on/off | tokens/s off | on | on/off |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['type']} | {r['off']['peak_rss_mib']:.0f} | {r['on']['peak_rss_mib']:.0f} | "
            f"{r['peak_rss_ratio']:.2f}× "
            f"| {r['off']['tokens_per_s']:.0f} | {r['on']['tokens_per_s']:.0f} | {r['tokens_per_s_ratio']:.2f}× |"
        )


if __name__ == "__main__":
    main()
