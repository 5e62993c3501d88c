"""`tunesmith compare CONFIG`: prompting baselines and several tuning variants, one report.

The config is a run config plus `compare.variants`: each variant is a name and overrides of the
run config (dotted keys), e.g. {lora: {}, lora-replay: {forgetting.replay: 0.25}}. Layout:

  runs/<name>/baselines/shots-K.json     the base model prompted zero-/k-shot (once)
  runs/<name>/variants/<variant>/        a complete run directory per variant
  runs/<name>/report.{html,md,json}      all of them side by side, with the trade-off plot
"""

from __future__ import annotations

import copy
import json
import shutil

from rich.console import Console

from tunesmith.config import RunConfig, set_key, validate_config
from tunesmith.errors import UserError
from tunesmith.forgetting.reference import BaseReference
from tunesmith.model.resolve import resolve
from tunesmith.phases import phase
from tunesmith.report.build import write_report
from tunesmith.run import train, train_sources, validate_inputs
from tunesmith.run.evaluate import score_baselines, score_endpoint_baselines, write_json
from tunesmith.runtime.precision import inference_dtype


def variant_configs(cfg: RunConfig, source: str = "config") -> dict[str, RunConfig]:
    """Each variant as a full, validated run config under <run dir>/variants/. No variants
    means one: the config itself."""
    base_tree = cfg.model_dump(mode="json")
    base_tree["compare"] = {"variants": {}}
    base_tree["eval"]["shots"] = []  # baselines run once, for all variants
    base_tree["eval"]["baselines"] = []
    variants = cfg.compare.variants or {"tuned": {}}
    out = {}
    for name, overrides in variants.items():
        tree = copy.deepcopy(base_tree)
        context = f"{source}: compare.variants.{name}"
        if not isinstance(overrides, dict):
            raise UserError(f"{context}: expected a mapping of dotted keys to values, got {overrides!r}")
        for key, value in overrides.items():
            if key.split(".")[0] in ("name", "output", "compare"):
                raise UserError(f"{context}: {key} is set by compare itself")
            set_key(tree, key, value, context)
        tree["name"] = name
        tree["output"]["dir"] = str(cfg.run_dir() / "variants")
        out[name] = validate_config(tree, context)
    return out


def run_compare(cfg: RunConfig, *, source: str = "config", console: Console | None = None, quiet: bool = False) -> dict:
    console = console or Console(stderr=True, soft_wrap=True)
    out_dir = cfg.run_dir()
    if out_dir.exists():
        raise UserError(f"{out_dir}: already exists; choose another name (--set name=...)")
    if not cfg.eval.test:
        raise UserError(f"{source}: eval.test: compare scores every variant on a test split; set it")
    variants = variant_configs(cfg, source)
    for v in variants.values():
        validate_inputs(v)
    with phase("model: find or convert", console):
        resolved = resolve(cfg.model)
    base = BaseReference(resolved, inference_dtype(cfg.train.precision))
    out_dir.mkdir(parents=True)
    try:
        if cfg.eval.shots or cfg.eval.baselines:
            sources, _ = train_sources(cfg, console)
            pool = [e for src in sources for e in src]
            if cfg.eval.shots:
                score_baselines(cfg, out_dir, base, pool, console)
                base.release()
            if cfg.eval.baselines:
                score_endpoint_baselines(cfg, out_dir, pool, console)
        runs = []
        for name, vcfg in variants.items():
            console.print(f"[bold]variant {name}[/bold]")
            train(vcfg, console=console, quiet=quiet, base=base)
            runs.append((name, vcfg.run_dir()))
    except BaseException:
        if not any((out_dir / "variants").glob("*/final")):
            shutil.rmtree(out_dir, ignore_errors=True)  # nothing finished: leave nothing behind
        raise
    with phase("report", console):
        report = write_report(
            out_dir, runs, baselines_dir=out_dir, primary=cfg.eval.primary, title=f"tunesmith compare: {cfg.name}"
        )
    result = {"run_dir": str(out_dir), "report": str(report), "variants": {n: str(d) for n, d in runs}}
    write_json(out_dir / "compare.json", result)
    result["summary"] = json.loads((out_dir / "report.json").read_text())
    return result
