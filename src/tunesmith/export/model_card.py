"""The model card (README.md) every export carries: where the weights came from, how they were
tuned, on what, and how they measured, all read from the run's own files (config.yaml,
summary.json, report.json), so a folder found later still says what it is."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunesmith.model.resolve import Resolved, is_run_dir


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run_dir(resolved: Resolved) -> Path | None:
    ref = Path(resolved.reference) if resolved.reference else None
    return ref if ref is not None and ref.is_dir() and is_run_dir(ref) else None


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def model_card(resolved: Resolved, kind: str, files: list[str], extra: dict | None = None) -> str:
    """Markdown with Hugging Face front matter. `kind`: adapter | merged | model | gguf."""
    run = _run_dir(resolved)
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if run else None
    summary = _read_json(run / "summary.json") if run else None
    report = _read_json(run / "report.json") if run else None
    base = (cfg or {}).get("model") or resolved.reference or str(resolved.path)
    library = "peft" if kind == "adapter" else "gguf" if kind == "gguf" else "transformers"
    name = (cfg or {}).get("name") or Path(resolved.reference or resolved.path).name
    lines = [
        "---",
        f"base_model: {json.dumps(str(base))}",
        f"library_name: {library}",
        "tags: [tunesmith" + (f", {cfg['method']}" if cfg else "") + (", gguf" if kind == "gguf" else "") + "]",
        "---",
        "",
        f"# {name}",
        "",
    ]
    what = {
        "adapter": "a PEFT adapter, loaded onto its base model with `peft.PeftModel.from_pretrained`",
        "merged": "the base model with the adapter merged into its weights (`AutoModelForCausalLM.from_pretrained`)",
        "model": "a full model in Hugging Face layout (`AutoModelForCausalLM.from_pretrained`)",
        "gguf": "a single GGUF file for llama.cpp-compatible runtimes",
    }[kind]
    lines += [f"This folder holds {what}, exported by tunesmith.", ""]
    lines += ["| | |", "|---|---|", f"| base model | `{base}` |"]
    if cfg:
        adapter = cfg.get("adapter") or {}
        a_type = adapter.get("type", "none")
        a_text = (
            "none (full fine-tuning)"
            if a_type == "none"
            else a_type
            + (
                f" (r={adapter.get('r')}, alpha={adapter.get('alpha')}, targets={adapter.get('targets')})"
                if a_type in ("lora", "qlora")
                else ""
            )
        )
        lines += [f"| method | {cfg.get('method')} |", f"| adapter | {a_text} |"]
    for key, value in (extra or {}).items():
        lines.append(f"| {key} | {value} |")
    lines += [f"| files | {', '.join(f'`{f}`' for f in files)} |", ""]
    if cfg:
        lines += _data_lines(cfg.get("data") or {}, summary)
    if summary or report:
        lines += _evaluation_lines(summary, report)
    elif not cfg:
        lines += ["Not tuned by a tunesmith run: the model as referenced, re-exported."]
    return "\n".join(lines) + "\n"


def _data_lines(data: dict, summary: dict | None) -> list[str]:
    """The card's Data section: the run's training sources, validation and what training took."""
    lines = ["## Data", ""]
    for source in data.get("train") or []:
        lines.append(f"- train: `{source.get('path')}` (weight {source.get('weight', 1.0)})")
    if data.get("val"):
        lines.append(f"- validation: `{data['val'].get('path')}`")
    elif data.get("val_fraction"):
        lines.append(f"- validation: {data['val_fraction']:.0%} held out of the training data")
    if summary:
        lines.append(
            f"- trained: {summary.get('steps')} optimizer steps over {summary.get('tokens')} tokens, "
            f"max length {data.get('max_length')}, precision {summary.get('precision')}"
        )
    lines.append("")
    return lines


def _evaluation_lines(summary: dict | None, report: dict | None) -> list[str]:
    """The card's Evaluation section, from the run's summary.json and report.json."""
    lines = ["## Evaluation", ""]
    if summary:
        lines.append(
            f"- final training loss {summary.get('final_loss'):.4f}"
            if summary.get("final_loss") is not None
            else "- final training loss: n/a"
        )
        if summary.get("val_loss") is not None:
            lines.append(f"- validation loss {summary['val_loss']:.4f}")
    for row in report.get("task", []) if report else []:
        lines.append(
            f"- {row['label']}: {(report or {}).get('primary')} {_pct(row['score'])} "
            f"(95% CI {_pct(row['lo'])} to {_pct(row['hi'])}, n={row['n']})"
        )
    for row in (report or {}).get("forgetting", []):
        lines.append(f"- general QA (forgetting probe): base {_pct(row['qa_base'])} -> tuned {_pct(row['qa_tuned'])}")
    rec = (report or {}).get("recommendation") or {}
    if rec.get("text"):
        lines += ["", rec["text"]]
    lines += [
        "",
        "Numbers from the run's `summary.json` and `report.json`; the full report is the run's `report.html`.",
    ]
    return lines
