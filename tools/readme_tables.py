"""README tables generated from committed results files, never typed.

Every measured figure in README.md stands between a pair of markers

    <!-- generated: NAME from RESULTS (make results-table) -->
    ...
    <!-- end: NAME -->

and is rendered here from the JSON file(s) the marker names. Usage:

    python tools/readme_tables.py record quickstart/runs/dates   # add a quickstart run to results/
    python tools/readme_tables.py                                # rewrite README's generated blocks
    python tools/readme_tables.py --check                        # exit 1 if README differs from them

A results file records the commit, versions and machine each number came from
(`tunesmith.provenance`); `record` refuses a run without them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "results"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) from (?P<source>\S+) \(make results-table\) -->\n)"
                   r"(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)
MACHINE_ORDER = ["avx512-bf16", "avx2-fp32"]


def describe(machine: dict) -> str:
    """The machine as its provenance says, including kernels limited below what the CPU has."""
    limited = "avx512f" in machine["cpu_flags"] and not machine["torch_cpu_capability"].startswith("AVX512")
    kernels = (f"{machine['torch_cpu_capability']} kernels only (limited by {', '.join(machine.get('kernel_limits', {})) or 'environment'}, "
               "as on a CPU without AVX-512)" if limited else f"{machine['torch_cpu_capability']} kernels")
    return f"{machine['cpu']}, {machine['cpus']} cores, flags {' '.join(machine['cpu_flags'])}, {kernels}"


_PCT = "{:.1%}"


def _pct(x: float) -> str:
    return _PCT.format(x)


def _span(values: list[float], fmt: str) -> str:
    """One value, or the range of several runs (one value where they round alike)."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}".replace("-", "−")


def _signed(x: float, digits: int = 3) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


# --- quickstart ------------------------------------------------------------------------------

def quickstart_runs() -> dict[str, list[dict]]:
    """Recorded quickstart runs by machine tag, in the order they were recorded."""
    out: dict[str, list[dict]] = {}
    for path in sorted(RESULTS.glob("quickstart-*.json")):
        data = json.loads(path.read_text())
        out[data["machine_tag"]] = data["runs"]
    return dict(sorted(out.items(), key=lambda kv: MACHINE_ORDER.index(kv[0]) if kv[0] in MACHINE_ORDER else 99))


def _variant_label(label: str) -> str:
    return {"zero-shot": "base model, zero-shot", "3-shot": "base model, 3-shot", "tuned: lora": "LoRA",
            "tuned: lora-replay": "LoRA + 25% self-replay"}.get(label, label)


def render_quickstart() -> str:
    machines = quickstart_runs()
    tag, runs = next(iter(machines.items()))
    run = runs[-1]
    t = run["tables"]
    train = {r["variant"]: r for r in t["training"]}
    lora = train["lora"]
    lines = [f"The latest run on {tag} ({describe(run['provenance']['machine'])}), commit {run['provenance']['commit'][:10]} "
             f"(SmolLM2-135M-Instruct, LoRA r=16 on all linear layers, {lora['trainable_parameters'] / 1e6:.1f}M "
             f"trainable parameters, {lora['steps']} steps of batch 8, {lora['precision']}):", ""]
    lines += [f"| test split ({t['task'][0]['n']} examples) | exact match (95% CI) | prompt tokens / request | latency / request |",
              "|---|---|---|---|"]
    best = max(r["score"] for r in t["task"])
    for r in t["task"]:
        score = _pct(r["score"])
        score = f"**{score}**" if r["score"] == best else score
        lines.append(f"| {_variant_label(r['label'])} | {score} ({r['lo'] * 100:.1f}–{r['hi'] * 100:.1f}) "
                     f"| {r['prompt_tokens']:.0f} | {r['latency_ms']:.0f} ms |")
    f0 = t["forgetting"][0]
    lines += ["", f"| forgetting probe | general QA ({f0['qa_items']} questions) | change, points (95% CI) | drift: NLL on base replies |",
              "|---|---|---|---|", f"| base model | {_pct(f0['qa_base'])} | | {f0['drift_base']:.3f} |"]
    for r in t["forgetting"]:
        lines.append(f"| {_variant_label(r['label'])} | {_pct(r['qa_tuned'])} | {_pts(r['qa_change'])} "
                     f"({_pts(r['qa_change_lo'])} to {_pts(r['qa_change_hi'])}) "
                     f"| {r['drift_tuned']:.3f} ({_signed(r['drift_increase'])}) |")
    lines += ["", f"Recommendation (from the report): {t['recommendation']['text']}", ""]
    lines += ["| machine | runs | `make demo` minutes | LoRA exact match | with replay | general QA kept with replay |",
              "|---|---|---|---|---|---|"]
    for tag, runs in machines.items():
        def score(r: dict, label: str) -> float:
            return next(x["score"] for x in r["tables"]["task"] if x["label"] == label)

        kept = [next(x["qa_tuned"] for x in r["tables"]["forgetting"] if x["variant"] == "lora-replay") for r in runs]
        lines.append(f"| {tag} | {len(runs)} | {_span([r['total_minutes'] for r in runs], '{:.1f}')} "
                     f"| {_span([score(r, 'tuned: lora') for r in runs], _PCT)} "
                     f"| {_span([score(r, 'tuned: lora-replay') for r in runs], _PCT)} | {_span(kept, _PCT)} |")
    for tag, runs in machines.items():
        phases: dict[str, list[float]] = {}
        for r in runs:
            per_run: dict[str, float] = {}
            for p in r["phases"]:  # a phase can recur in a run (a cached step, the second time)
                per_run[p["phase"]] = per_run.get(p["phase"], 0.0) + p["seconds"]
            for name, seconds in per_run.items():
                phases.setdefault(name, []).append(seconds)
        lines += ["", f"Where the time goes on {tag} (median seconds per phase): " + "; ".join(
            f"{name} {statistics.median(s):.0f}" for name, s in phases.items()) + "."]
    return "\n".join(lines) + "\n"


def record_quickstart(run_dir: Path) -> Path:
    """Append a finished quickstart run (its quickstart.json) to results/quickstart-<machine>.json."""
    source = run_dir / "quickstart.json"
    if not source.is_file():
        raise SystemExit(f"{source}: no quickstart.json (is {run_dir} a finished quickstart run?)")
    run = json.loads(source.read_text())
    for key in ("provenance", "tables", "phases", "total_minutes"):
        if key not in run:
            raise SystemExit(f"{source}: no '{key}' (written by an older tunesmith); run the quickstart again")
    commit = run["provenance"]["commit"]
    if not commit or commit.endswith("+dirty"):
        raise SystemExit(f"{source}: commit {commit!r}: record runs of committed code only")
    keep = {k: run[k] for k in ("provenance", "tables", "phases", "total_minutes", "model", "task")}
    tag = run["provenance"]["machine_tag"]
    path = RESULTS / f"quickstart-{tag}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"machine_tag": tag, "runs": []}
    data["runs"].append(keep)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


# --- adapters (bench/adapters.py) ----------------------------------------------------------------

def _adapter_label(row: dict) -> str:
    a = row["adapter"]
    label = {"full": "full fine-tuning", "lora": "LoRA r={r}", "dora": "DoRA r={r}", "qlora-nf4": "QLoRA 4-bit NF4",
             "qlora-8bit": "QLoRA 8-bit", "ia3": "IA3", "prefix": "prefix ({virtual_tokens} tokens)",
             "prompt": "prompt ({virtual_tokens} tokens)"}[row["type"]].format(**a)
    if not row["gradient_checkpointing"]:
        label = label[:-1] + ", no checkpointing)" if label.endswith(")") else label + " (no checkpointing)"
    return label


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def render_adapters() -> str:
    data = json.loads((ROOT / "bench" / "results" / "adapters-avx512-bf16.json").read_text())
    rows = data["rows"]
    lora = next(r for r in rows if r["type"] == "lora")
    lines = ["| type | trainable parameters | peak RSS | vs LoRA | tokens/s | vs LoRA |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {_adapter_label(r)} | {_count(r['trainable_parameters'])} | {r['peak_rss_mib']:.0f} MiB "
                     f"| {r['peak_rss_mib'] / lora['peak_rss_mib']:.2f}× | {r['tokens_per_s']:.0f} "
                     f"| {r['tokens_per_s'] / lora['tokens_per_s']:.2f}× |")
    return "\n".join(lines) + "\n"


# --- against TRL (bench/speed.py) -----------------------------------------------------------------

def render_bench() -> str:
    data = json.loads((ROOT / "bench" / "results" / "speed-avx512-bf16.json").read_text())
    rows, summary = {r["name"]: r for r in data["rows"]}, data["summary"]
    lora, full, dpo = summary["lora"], summary["full"], summary["dpo"]
    fast, ours, default = rows[lora["trl_fastest"]], rows[lora["tunesmith"]], rows["tunesmith"]
    trl_default = rows["trl-default"]
    kind = lora["trl_fastest"].removeprefix("trl-").replace("-", " ")

    def mfu(r: dict) -> str:
        return f"{r['mfu'] * 100:.0f}%"

    def pair(name: str) -> tuple[dict, dict]:
        return rows[summary[name]["trl_fastest"]], rows[summary[name]["tunesmith"]]

    lines = ["| | real tokens/s | peak RSS | held-out loss | MFU (vs measured bf16 peak) |", "|---|---|---|---|---|",
             f"| LoRA: TRL fastest ({kind}) | {fast['tokens_per_s']:.0f} | {fast['peak_rss_mib']:.0f} MiB "
             f"| {fast['heldout_loss']:.4f} | {mfu(fast)} |",
             f"| LoRA: tunesmith {ours['name'].removeprefix('tunesmith-')} | **{ours['tokens_per_s']:.0f} ({lora['speed_ratio']:.2f}×)** "
             f"| **{ours['peak_rss_mib']:.0f} MiB ({lora['rss_ratio']:.2f}×)** | {ours['heldout_loss']:.4f} "
             f"({ours['heldout_loss'] / fast['heldout_loss']:.3f}×) | **{mfu(ours)}** |",
             f"| LoRA: tunesmith defaults | {default['tokens_per_s']:.0f} ({default['tokens_per_s'] / fast['tokens_per_s']:.2f}×) "
             f"| {default['peak_rss_mib']:.0f} MiB ({default['peak_rss_mib'] / fast['peak_rss_mib']:.2f}×) "
             f"| {default['heldout_loss']:.4f} (TRL default: {trl_default['heldout_loss']:.4f}, "
             f"{default['heldout_loss'] / trl_default['heldout_loss']:.3f}×) | {mfu(default)} |"]
    trl, ts = pair("full")
    lines.append(f"| full fine-tuning: TRL / tunesmith | {trl['tokens_per_s']:.0f} / **{ts['tokens_per_s']:.0f} "
                 f"({full['speed_ratio']:.2f}×)** | {trl['peak_rss_mib']:.0f} / {ts['peak_rss_mib']:.0f} MiB "
                 f"({full['rss_ratio']:.2f}×) | {trl['heldout_loss']:.4f} / {ts['heldout_loss']:.4f} | {mfu(trl)} / {mfu(ts)} |")
    trl, ts = pair("dpo")
    lines.append(f"| DPO with LoRA: TRL / tunesmith | {trl['tokens_per_s']:.0f} / **{ts['tokens_per_s']:.0f} "
                 f"({dpo['speed_ratio']:.2f}×)** | {trl['peak_rss_mib']:.0f} / {ts['peak_rss_mib']:.0f} MiB "
                 f"({dpo['rss_ratio']:.2f}×) | – | {mfu(trl)} / {mfu(ts)} |")
    return "\n".join(lines) + "\n"


# --- the README ------------------------------------------------------------------------------

RENDERERS = {"quickstart": render_quickstart, "adapters": render_adapters, "bench": render_bench}


def regenerate(text: str) -> str:
    def block(m: re.Match) -> str:
        name = m["name"]
        if name not in RENDERERS:
            raise SystemExit(f"README.md: generated block {name!r} has no renderer in tools/readme_tables.py")
        return m.group(1) + RENDERERS[name]() + m.group(5)
    return BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", choices=["render", "record"], default="render")
    ap.add_argument("run_dir", nargs="?", type=Path)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from what the results give")
    args = ap.parse_args(argv)
    if args.command == "record":
        if args.run_dir is None:
            ap.error("record needs the quickstart's run directory (e.g. quickstart/runs/dates)")
        print(f"recorded in {record_quickstart(args.run_dir)}")
        return 0
    text = README.read_text()
    new = regenerate(text)
    if args.check:
        if new != text:
            changed = [m["name"] for m, n in zip(BLOCK.finditer(text), BLOCK.finditer(new)) if m.group(0) != n.group(0)]
            print(f"README.md: generated blocks differ from the results files: {', '.join(changed)}; run make results-table",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
