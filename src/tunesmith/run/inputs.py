"""A run's inputs: its training and validation examples encoded by the method (replay added),
and the files it will need after training checked before it starts."""

from __future__ import annotations

import random
from typing import NamedTuple

from rich.console import Console

from tunesmith.config import RunConfig
from tunesmith.data.layouts import Example
from tunesmith.data.records import load_examples, load_source
from tunesmith.engine.loop import TrainData
from tunesmith.errors import UserError
from tunesmith.eval.metrics import load_user_metric
from tunesmith.forgetting.reference import BaseReference
from tunesmith.forgetting.replay import replay_examples, replay_weight


def _split_val(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(examples)))
    val_idx = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val_idx], [e for i, e in enumerate(examples) if i in val_idx]


def _load(source, cfg: RunConfig, console: Console) -> list[Example]:
    loaded = load_source(source.path, on_error=cfg.data.on_error, **source.options())
    if loaded.problems:
        console.print(
            f"[yellow]{source.path}: skipped {len(loaded.problems)} bad records (data.on_error: skip); "
            f"first: {loaded.problems[0]}[/yellow]"
        )
    if loaded.unpreferred:
        console.print(f"{source.path}: {loaded.unpreferred} labelled pairs left out (judged tie or both bad)")
    if (note := loaded.ignored_note(source.path)) is not None:
        console.print(f"[yellow]warning: {note}[/yellow]", highlight=False)
    examples = desirable_only(loaded.examples, source.path, cfg.method, console)
    for e in examples:
        e.train_on = source.train_on
    return examples


IMITATING = ("sft", "distill")  # methods that learn to write the responses they are given


def desirable_only(examples: list[Example], path: str, method: str, console: Console) -> list[Example]:
    """Responses labelled undesirable (`label: false`, for KTO) are never imitated: SFT and
    distillation train on the desirable ones and say how many they left out."""
    if method not in IMITATING or not any(e.desirable is False for e in examples):
        return examples
    kept = [e for e in examples if e.desirable is not False]
    if not kept:
        raise UserError(
            f"{path}: every record is labelled undesirable (label: false); method {method} would learn "
            "to write them. Train them with method: dpo, preference.loss: kto"
        )
    console.print(
        f"[yellow]{path}: {len(examples) - len(kept)} records labelled undesirable (label: false) left out: "
        f"method {method} trains on the {len(kept)} desirable ones only (preference.loss: kto learns from "
        "both)[/yellow]",
        highlight=False,
    )
    return kept


class Sources(NamedTuple):
    """Every training source's examples (one list per data.train entry), and the validation
    examples (a file, or split off)."""

    train: list[list[Example]]
    val: list[Example]


def train_sources(cfg: RunConfig, console: Console) -> Sources:
    """Every training source's examples, and the validation examples (a file, or split off)."""
    sources = [_load(s, cfg, console) for s in cfg.data.train]
    val_examples: list[Example] = []
    if cfg.data.val:
        val_examples = _load(cfg.data.val, cfg, console)
    elif cfg.data.val_fraction:
        split = [_split_val(src, cfg.data.val_fraction, cfg.train.seed) for src in sources]
        sources = [train for train, _ in split]
        val_examples = [e for _, val in split for e in val]
    return Sources(sources, val_examples)


def load_data(cfg: RunConfig, method, tokenizer, console: Console, base: BaseReference, sources: Sources) -> TrainData:
    """Encode the training sources (from `train_sources`) and validation data with the method, and
    add replay data (self-replay draws on `base`)."""
    features, sizes = [], []
    for index, src in enumerate(sources.train):
        kept = [f for f in (method.features(e, tokenizer) for e in src) if f is not None]
        for f in kept:
            f["data_source"] = index  # which data.train entry (a teacher per source needs it)
        features += kept
        sizes.append(len(kept))
    val = [f for f in (method.features(e, tokenizer) for e in sources.val) if f is not None]
    if not features:
        raise UserError(
            f"{cfg.data.train[0].path}: no trainable examples after encoding (all longer than "
            f"data.max_length={cfg.data.max_length}?)"
        )
    truncated, dropped = method.truncated, method.dropped
    if truncated or dropped:
        console.print(
            f"[yellow]note: data.max_length={cfg.data.max_length}: {truncated} examples truncated, "
            f"{dropped} left out (data.truncation: {cfg.data.truncation})[/yellow]"
        )
    weights = [s.weight for s in cfg.data.train]
    if cfg.forgetting.replay:
        replay = [
            f for f in (method.features(e, tokenizer) for e in replay_examples(cfg.forgetting.replay_source, base)) if f
        ]
        if not replay:
            raise UserError(f"forgetting.replay_source {cfg.forgetting.replay_source}: no trainable replay examples")
        for f in replay:
            f["anchor"] = True  # what KL anchoring applies to
        mixed = sum(w * n for w, n in zip(weights, sizes))
        weights.append(replay_weight(cfg.forgetting.replay, mixed, len(replay)))
        features += replay
        sizes.append(len(replay))
        console.print(
            f"replay: {len(replay)} examples from {cfg.forgetting.replay_source}, "
            f"{cfg.forgetting.replay:.0%} of each epoch (source weight {weights[-1]:.2f})"
        )
    return TrainData(features, sizes, weights, val)


def validate_inputs(cfg: RunConfig) -> None:
    """Files named for after training are checked now, not after an hour of it."""
    if cfg.eval.test:
        load_examples(cfg.eval.test)
    if cfg.eval.shots and not cfg.eval.test:
        raise UserError("eval.shots: the prompting baselines are scored on eval.test; set it")
    if cfg.eval.baselines and not cfg.eval.test:
        raise UserError("eval.baselines: endpoint baselines are scored on eval.test; set it")
    if cfg.forgetting.text:
        load_examples(cfg.forgetting.text)
    if cfg.forgetting.replay and cfg.forgetting.replay_source != "self":
        load_examples(cfg.forgetting.replay_source)
    if cfg.eval.metric:
        load_user_metric(cfg.eval.metric)
    if cfg.adapter.type == "qlora":
        from tunesmith.model.quantize import require_bitsandbytes

        require_bitsandbytes()
