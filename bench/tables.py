"""Markdown tables of a speed-benchmark results file (bench/speed.py): what the README shows.

Medians of the repeats with their range; ratios are tunesmith's fastest configuration of a group
against TRL's fastest, by median. Used by speed.py to print and by tools/readme_tables.py to
render README's block, so the two never differ.
"""

from __future__ import annotations

GROUP_LABEL = {"lora": "LoRA SFT", "full": "full fine-tuning", "dpo": "DPO, LoRA", "grpo": "GRPO, LoRA"}


def _range(s: dict, fmt: str) -> str:
    lo, mid, hi = fmt.format(s["min"]), fmt.format(s["median"]), fmt.format(s["max"])
    return mid if lo == hi else f"{mid} ({lo}–{hi})"


def _pct(s: dict) -> str:
    return _range({k: v * 100 for k, v in s.items() if k != "n"}, "{:.0f}") + "%"


def configs(result: dict) -> str:
    """One row per configuration: tokens/s, peak RSS, held-out loss, MFU (median and range)."""
    gpu = any("peak_gpu_mib" in c for c in result["configs"].values())  # bench/gpu.sh: the GPU's memory too
    memory_column = " peak GPU memory (MiB) |" if gpu else ""
    lines = [
        f"| configuration | real tokens/s | peak RSS (MiB) |{memory_column} held-out loss "
        f"| MFU ({result['precision']} peak) |",
        "|---|---|---|---|---|" + ("---|" if gpu else ""),
    ]
    for name, c in result["configs"].items():
        if c["group"] == "grpo":
            continue
        bold = "**" if c["tool"] == "tunesmith" else ""
        loss = _range(c["heldout_loss"], "{:.4f}") if "heldout_loss" in c else "–"
        mfu = _pct(c["mfu"]) if "mfu" in c else "–"
        memory = f" {_range(c['peak_gpu_mib'], '{:.0f}')} |" if gpu and "peak_gpu_mib" in c else (" – |" if gpu else "")
        lines.append(
            f"| {bold}{name}{bold} | {_range(c['tokens_per_s'], '{:.0f}')} | {_range(c['peak_rss_mib'], '{:.0f}')} "
            f"|{memory} {loss} | {mfu} |"
        )
    grpo = [(n, c) for n, c in result["configs"].items() if c["group"] == "grpo"]
    if grpo:
        lines += [
            "",
            "| GRPO | sampling: generated tokens/s | training: tokens/s | peak RSS (MiB) |",
            "|---|---|---|---|",
        ]
        for name, c in grpo:
            lines.append(
                f"| {name} | {_range(c['sampling_tokens_per_s'], '{:.1f}')} "
                f"| {_range(c['training_tokens_per_s'], '{:.0f}')} | {_range(c['peak_rss_mib'], '{:.0f}')} |"
            )
    return "\n".join(lines)


def _met(target: dict) -> str:
    return "**met**" if target["met"] else "not met"


def targets(result: dict) -> str:
    """Each group's ratios against the targets, met or not."""
    lines = ["| | tunesmith / TRL's fastest | measured | target | |", "|---|---|---|---|---|"]
    for group, g in result["groups"].items():
        vs = f"{g['tunesmith']} / {g['trl_fastest']}"
        t = g["targets"]
        lo, hi = g["speed_ratio_range"]
        what = "end to end, sampling included: tokens/s" if group == "grpo" else "real tokens/s"
        lines.append(
            f"| {GROUP_LABEL[group]}: {what} | {vs} | {g['speed_ratio']:.2f}× ({lo:.2f}–{hi:.2f}) "
            f"| {'≥ ' + format(t['speed']['target'], 'g') + '×' if 'speed' in t else 'faster'} "
            f"| {_met(t['speed']) if 'speed' in t else ('yes' if g['speed_ratio'] > 1 else 'no')} |"
        )
        lines.append(
            f"| {GROUP_LABEL[group]}: peak RSS | {vs} | {g['rss_ratio']:.2f}× "
            f"| {'≤ ' + format(t['rss']['target'], 'g') + '×' if 'rss' in t else 'less'} "
            f"| {_met(t['rss']) if 'rss' in t else ('yes' if g['rss_ratio'] < 1 else 'no')} |"
        )
        if group == "grpo":
            lines.append(
                f"| {GROUP_LABEL[group]}: sampling, training tokens/s | {vs} | {g['sampling_ratio']:.2f}×, "
                f"{g['training_ratio']:.2f}× | reported | |"
            )
        if "gpu_memory_ratio" in g:
            lines.append(
                f"| {GROUP_LABEL[group]}: peak GPU memory | {vs} | {g['gpu_memory_ratio']:.2f}× | less "
                f"| {'yes' if g['gpu_memory_ratio'] < 1 else 'no'} |"
            )
        for pair, v in g.get("loss", {}).items():
            lines.append(
                f"| {GROUP_LABEL[group]}: held-out loss | {pair} | {v['difference']:+.4f} "
                f"| within the seeds' spread ({v['seed_band']:.4f}) | {'**met**' if v['within'] else 'not met'} |"
            )
        if "mfu_packed" in g:
            target = t.get("mfu_packed")
            lines.append(
                f"| {GROUP_LABEL[group]}: MFU, packed | {g['tunesmith']} | {g['mfu_packed']:.0%} "
                f"| {'≥ ' + format(target['target'], '.0%') if target else 'reported'} | "
                f"{_met(target) if target else ''} |"
            )
    return "\n".join(lines)
