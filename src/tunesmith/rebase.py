"""`tunesmith rebase OLD --to-base NEW_MODEL`: the same fine-tune on a new base model, for when the
old base is retired. The old tuned model (a local run, or an OpenAI-compatible endpoint such as a
hosted fine-tune) answers the run's training prompts (and any extra prompts); the new base is
trained on those answers (sequence-level distillation) with the old run's config otherwise; a
parity report compares old and new on the test split and the forgetting probe's general QA, each
difference paired over the same items with a 95% interval. Layout:

  runs/<new>.replies/replies.jsonl   the old model's answers (resumable: a restart asks only the rest)
  runs/<new>/                        the new run, as any run
  runs/<new>/parity.{json,md}        old vs new
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from tunesmith import atomic
from tunesmith.config import RunConfig, apply_override, load_config, validate_config
from tunesmith.data.records import load_examples
from tunesmith.errors import UserError
from tunesmith.eval.bootstrap import bootstrap_ci, paired_bootstrap_ci
from tunesmith.eval.endpoint import ChatEndpoint
from tunesmith.eval.endpoint_task import ReplyCache, evaluate_endpoint
from tunesmith.eval.task import evaluate_task, per_example_scores
from tunesmith.model.load import load_for_inference
from tunesmith.model.resolve import is_run_dir
from tunesmith.report.recommend import MARGIN
from tunesmith.run import train
from tunesmith.run.evaluate import load_test_split
from tunesmith.runtime.precision import inference_dtype
from tunesmith.teacher_replies import LocalTeacher, generate_replies


def _old_model(old: str, old_model: str | None, api_key_env: str | None, config: Path | None, max_tokens: int):
    """(the old run's config, a teacher that answers as the old model, its label)."""
    if old.startswith(("http://", "https://")):
        if config is None:
            raise UserError(
                "rebase: an endpoint as the old model needs --config, the run config it was trained with "
                "(its data, test split and settings carry over)"
            )
        endpoint = ChatEndpoint(
            old, old_model, api_key_env, max_tokens=max_tokens, options=("--old-model", "--api-key-env")
        )
        return load_config(config), endpoint, endpoint.name
    run_dir = Path(old)
    if not (run_dir.is_dir() and is_run_dir(run_dir)):
        raise UserError(f"{old}: the old model is a run directory or an endpoint's http(s):// URL")
    cfg = load_config(config or run_dir / "config.yaml")
    return cfg, LocalTeacher(str(run_dir), max_tokens=max_tokens), str(run_dir)


def rebased_config(cfg: RunConfig, new_base: str, name: str, replies: Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The old run's config on the new base, trained on the old model's answers (`overrides`:
    --set assignments for the new run, e.g. more steps for a larger base)."""
    tree = cfg.model_dump(mode="json")
    tree.update(model=new_base, name=name)
    tree["data"]["train"] = [{"path": str(replies)}]
    tree["compare"], tree["sweep"] = {"variants": {}}, None
    for assignment in overrides:
        apply_override(tree, assignment)
    return validate_config(tree, f"rebase onto {new_base}")


def run_rebase(
    old: str,
    new_base: str,
    *,
    extra_prompts: str | None = None,
    old_model: str | None = None,
    api_key_env: str | None = None,
    config: Path | None = None,
    name: str | None = None,
    max_tokens: int = 256,
    overrides: Sequence[str] = (),
    console: Console | None = None,
    quiet: bool = False,
) -> dict:
    console = console or Console(stderr=True, soft_wrap=True)
    cfg, teacher, old_label = _old_model(old, old_model, api_key_env, config, max_tokens)
    name = name or f"{cfg.name}-rebased"
    out_root = Path(cfg.output.dir)
    new_dir, replies = out_root / name, out_root / f"{name}.replies" / "replies.jsonl"
    if new_dir.exists():
        hint = (
            ""
            if (new_dir / "final").exists()
            else "; if an earlier rebase was interrupted in training, finish it with tunesmith train "
            f"{new_dir / 'config.yaml'} --resume"
        )
        raise UserError(f"{new_dir}: already exists; choose another --name{hint}")
    rebased_config(cfg, new_base, name, replies, overrides)  # a bad --set fails before any answer is asked for
    sources = [s.path for s in cfg.data.train] + ([extra_prompts] if extra_prompts else [])
    for source in sources:  # a bad file fails before the old model answers anything
        load_examples(source)
    console.print(f"the old model ({old_label}) answers {len(sources)} prompt file(s) ...")
    counts = [generate_replies(teacher, source, replies) for source in sources]
    del teacher
    new_cfg = rebased_config(cfg, new_base, name, replies, overrides)
    console.print(
        f"[bold]{name}[/bold]: {new_base} trained on {sum(c['answered'] + c['already_answered'] for c in counts)} "
        "answers of the old model"
    )
    summary = train(new_cfg, console=console, quiet=quiet)
    parity = write_parity(cfg, old, old_label, new_dir, old_model, api_key_env, console)
    return {"run_dir": str(new_dir), "replies": str(replies), "summary": summary, "parity": parity}


def _old_test_predictions(
    cfg: RunConfig, old: str, new_dir: Path, old_model: str | None, api_key_env: str | None, console: Console
) -> Path:
    """The old model's replies to the test split, scored: from its run when it has them, else asked now."""
    out = new_dir / "parity" / "old_test_predictions.jsonl"
    if old.startswith(("http://", "https://")):
        endpoint = ChatEndpoint(
            old, old_model, api_key_env, max_tokens=cfg.eval.max_new_tokens, options=("--old-model", "--api-key-env")
        )
        evaluate_endpoint(
            endpoint,
            load_test_split(cfg),
            label="old",
            cache=ReplyCache.shared(),
            max_new_tokens=cfg.eval.max_new_tokens,
            metric=cfg.eval.metric,
            predictions_path=out,
        )
        return out
    kept = Path(old) / "eval" / "test_predictions.jsonl"
    if kept.is_file():
        return kept
    console.print("scoring the old model on the test split ...")
    model, tokenizer = load_for_inference(old, dtype=inference_dtype(cfg.train.precision))
    evaluate_task(
        model,
        tokenizer,
        load_test_split(cfg),
        label="old",
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        metric=cfg.eval.metric,
        latency_samples=0,
        predictions_path=out,
    )
    return out


def _compare(old: list[tuple[str, float]], new: list[tuple[str, float]]) -> dict:
    if [k for k, _ in old] != [k for k, _ in new]:
        raise UserError("rebase parity: old and new were scored on different items; score both on the same test split")
    a, b = [v for _, v in old], [v for _, v in new]
    return {"old": bootstrap_ci(a), "new": bootstrap_ci(b), "difference": paired_bootstrap_ci(a, b)}


def write_parity(
    cfg: RunConfig,
    old: str,
    old_label: str,
    new_dir: Path,
    old_model: str | None,
    api_key_env: str | None,
    console: Console,
) -> dict:
    """parity.json and parity.md in the new run: task score and general QA, old vs new, paired."""
    parity: dict = {"old": old_label, "new": str(new_dir), "primary": cfg.eval.primary, "margin": MARGIN}
    if cfg.eval.test:
        old_preds = _old_test_predictions(cfg, old, new_dir, old_model, api_key_env, console)
        parity["task"] = _compare(
            per_example_scores(old_preds, cfg.eval.primary),
            per_example_scores(new_dir / "eval" / "test_predictions.jsonl", cfg.eval.primary),
        )
    old_qa = Path(old) / "forgetting" / "tuned.json"
    new_qa = new_dir / "forgetting" / "tuned.json"
    if old_qa.is_file() and new_qa.is_file():

        def items(path):
            return [(q["question"], float(q["correct"])) for q in json.loads(path.read_text())["qa"]]

        parity["general_qa"] = _compare(items(old_qa), items(new_qa))
    d = parity.get("task", {}).get("difference")
    if d is None:
        parity["verdict"] = "not measured: the config has no eval.test"
    elif d["lo"] >= -MARGIN:
        parity["verdict"] = (
            f"parity: the new model is at most {MARGIN * 100:.0f} points below the old one on "
            f"{cfg.eval.primary} (95% interval of new − old: {d['lo'] * 100:+.1f} to {d['hi'] * 100:+.1f} points)"
        )
    else:
        parity["verdict"] = (
            f"not at parity: new − old on {cfg.eval.primary} is {d['mean'] * 100:+.1f} points "
            f"(95% interval {d['lo'] * 100:+.1f} to {d['hi'] * 100:+.1f}); more or other prompts, "
            "more steps, or a larger new base may close it"
        )
    atomic.write_text(new_dir / "parity.json", json.dumps(parity, indent=2))
    atomic.write_text(new_dir / "parity.md", parity_markdown(parity))
    return parity


def parity_markdown(p: dict) -> str:
    lines = [
        f"# Rebase parity: {p['new']}",
        "",
        f"Old model: {p['old']}.",
        "",
        p["verdict"] + ".",
        "",
        "| measure | old | new | new − old (95% CI, paired) | items |",
        "|---|---|---|---|---|",
    ]
    for key, title in (("task", f"task {p['primary']}"), ("general_qa", "general QA")):
        if key in p:
            s = p[key]
            d = s["difference"]
            lines.append(
                f"| {title} | {s['old']['mean']:.1%} | {s['new']['mean']:.1%} | {d['mean'] * 100:+.1f} points "
                f"({d['lo'] * 100:+.1f} to {d['hi'] * 100:+.1f}) | {d['n']} |"
            )
    if "general_qa" not in p:
        lines += [
            "",
            "General QA: not compared (the old run has no forgetting probe, or the old model is an endpoint).",
        ]
    return "\n".join(lines) + "\n"
