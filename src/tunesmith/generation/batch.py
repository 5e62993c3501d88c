"""Replies to a batch of prompts from one model as it is, through the engine: evaluation, the
prompting baselines, the forgetting probe, teachers' replies and RL sampling all generate here.

The model generates with whatever adapter is active on it (no per-row adapters); each prompt is
a row of its own (no padding), up to `rows` decoding at once, the next admitted as one finishes.
Prefix and prompt tuning put virtual tokens before every prompt, which row attention does not
model: `supported` says so and callers keep transformers' generate for them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from tunesmith.generation.engine import GenerationEngine, Request
from tunesmith.generation.kv_arena import bytes_per_token
from tunesmith.generation.sampling import RowGrammar, RowSettings


class AsIs:
    """A model as a ModelSource: every request gets the model as it stands."""

    def __init__(self, model):
        self.model, self.lock = model, threading.Lock()

    def adapter_key(self, model_id):
        return None


def supported(model) -> bool:
    from tunesmith.generation.row_attention import attention_kind
    from tunesmith.model.peft_wrapping import is_prompt_learning

    if is_prompt_learning(model):
        return False
    try:
        attention_kind(model)
    except ValueError:
        return False
    return True


def generate_tokens(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    settings: RowSettings,
    stop_ids: frozenset[int],
    rows: int = 32,
    grammars: list[RowGrammar | None] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """The generated tokens for each prompt (through the stop token, when one came)."""
    if not prompts:
        return []
    param = next(model.parameters())
    dtype = param.dtype
    if param.device.type == "cpu" and torch.is_autocast_enabled("cpu"):  # keys come in the autocast dtype
        dtype = torch.get_autocast_dtype("cpu")
    longest = max(len(p) for p in prompts) + max_new_tokens
    budget = min(rows, len(prompts)) * longest * bytes_per_token(model.config, dtype)
    engine = GenerationEngine(AsIs(model), budget, max_rows=rows, dtype=dtype, per_row_adapters=False)
    grammars = grammars or [None] * len(prompts)
    with head_cast_once(model):
        streams = engine.run(
            [
                Request(p, max_new_tokens, settings=settings, stop_ids=stop_ids, grammar=g)
                for p, g in zip(prompts, grammars)
            ],
            on_done,
        )
    return [[c.token for c in s] for s in streams]


@contextmanager
def head_cast_once(model) -> Iterator[None]:
    """Under CPU autocast, the output head's fp32 weight cast to the autocast dtype once for the
    whole generation instead of at every forward pass: the same values (autocast casts it just so),
    and at a few rows a pass the cast of a 49k x 576 head costs three times its matmul. Training
    keeps the head in fp32 (it may be the tied, trainable embeddings); the copy lives while replies
    are sampled (an RL or on-policy step, an evaluation while training)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if (
        head is None
        or weight is None
        or type(weight.data) is not torch.Tensor  # a sharded (DTensor) head is FSDP's to gather
        or weight.device.type != "cpu"
        or weight.dtype != torch.float32
        or not torch.is_autocast_enabled("cpu")
    ):
        yield
        return
    head.weight = torch.nn.Parameter(weight.detach().to(torch.get_autocast_dtype("cpu")), requires_grad=False)
    try:
        yield
    finally:
        head.weight = weight
