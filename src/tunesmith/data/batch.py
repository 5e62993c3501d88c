"""`Batch`: what a method's `collate` returns and the engine trains on, every key it may hold."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Required, TypedDict

if TYPE_CHECKING:
    import torch


class Batch(TypedDict, total=False):
    """What `collate` returns, the engine reads and `rollout`/`loss` may add to. The engine moves
    its top-level tensors to the device in place, so what a method writes stays with the batch
    the engine holds (a rollout reused for several optimizer steps, the samples to log)."""

    # every batch: the engine normalises and counts with these
    n_items: Required[int]  # what the summed loss sums over (the engine divides by their total)
    n_tokens: Required[int]  # real tokens of the sequences trained (a shared prompt counts with each); rollouts set it
    # token batches (data/collate.py collate_tokens)
    input_ids: torch.Tensor  # (rows, width), right-padded
    labels: torch.Tensor  # input_ids with IGNORE where no loss is taken
    attention_mask: torch.Tensor | None  # None for packed rows (position_ids say where sequences start)
    position_ids: torch.Tensor  # packed rows: positions restart at 0 for each sequence
    segments: list[list[tuple[int, int]]]  # [start, end) of each sequence of each row, for segment attention
    segment_prefixes: list[list[int | None]]  # per segment: the earlier segment whose keys it sees first, or None
    reply_of_token: torch.Tensor  # each labelled token's sequence, where rows hold several after their prompt
    n_replies: int  # how many sequences `reply_of_token` numbers
    shared_prompts: Batch  # preference pairs: the same pairs, each packed after its prompt (`data/shared_prefix.py`)
    anchor: torch.Tensor  # bool, trained tokens of replay examples (KL anchoring, forgetting.kl)
    # set by the engine
    ghost: bool  # a pass that repeats another with weight zero, so that ranks' collectives line up
    samples: list[dict[str, Any]]  # methods with `logs_samples`: one record per sampled sequence, logged with the step
    # written by methods for themselves (documented where they are written)
    prompts: list[Any]  # online methods: what `rollout` samples replies to
    rollout: dict[str, Any]  # online methods: the sampled replies and what scores them, kept for reuse
    general: dict[str, Any]  # SFT with forgetting.self_distill: general prompts and the replies sampled to them
    reference: torch.Tensor  # preference pairs, full fine-tuning: precomputed reference log-probs
    desirable: torch.Tensor  # KTO: whether each response is desirable
    margin: torch.Tensor  # reward modelling: the margin each pair asks for
    teacher_topk_ids: torch.Tensor  # distillation from a cached teacher top-k
    teacher_topk_logps: torch.Tensor
    teacher_weights: torch.Tensor  # distillation from several teachers: each teacher's share per example
    lengths: list[int]  # Tinker's client losses: labelled positions per datum
    inputs: dict[str, torch.Tensor]  # Tinker's client losses: the datum's loss_fn_inputs
