"""Logit-level knowledge distillation: the student learns the teacher's next-token distribution.

Features and batches are SFT's (the same data, the same trained tokens). The loss at each trained
position is `kd_ratio` × divergence(student ‖ teacher) + (1 − `kd_ratio`) × cross-entropy with the
data's token (`methods/distill_losses.py`). Only positions that carry loss get logits, in chunks
recomputed in the backward pass, so memory does not scale with vocabulary × sequence × batch.

The teacher is run without gradients on every batch, or, with `distill.teacher_topk: k`, once
before training: its top-k log-probabilities at every trained position are cached on disk
(keyed by teacher weights, data and k, so epochs, resumed runs and other runs on the same data
reuse them) and the loss is forward KL against them.

On-policy (`distill.on_policy` λ > 0, GKD's mixture; Agarwal et al., 2024): a share λ of batches,
chosen by a hash of the batch and the seed (so a resumed run chooses the same), replaces the
data's replies by the student's own, sampled from the batch's prompts on the generation engine;
the teacher scores every sampled token in one forward pass and the loss is the divergence on
those tokens alone (no cross-entropy: there is no data token). The batch keeps its weight in the
step: its summed divergence is scaled to the number of trained tokens it was counted with.

A teacher behind an endpoint (`distill.teacher: https://…`, `methods/distill_teachers.py`) gives
only the log-probability of each sampled token, so the loss there is the policy-gradient form of
per-token reverse KL (Thinking Machines' on-policy distillation): each sampled token's advantage
is log p_teacher − log p_student (detached), the loss −Σ advantage · log p_student, whose expected
gradient is reverse KL's; its logged value is the sampled reverse KL Σ (log p_student − log
p_teacher). The data's batches (λ < 1) then train by cross-entropy on the data.

Every sampled sequence is logged on logged steps (`samples.jsonl`: prompt, reply tokens, the
student's and teacher's log-probability and the loss of each token).

Several loaded teachers (`distill.teachers`): each example's divergence is the weighted sum of
its teachers' (those named for its data source, else those named for none, else all), the
weights normalised per example; a teacher no example of a batch has is not run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from tunesmith import atomic
from tunesmith.data.chat import IGNORE
from tunesmith.engine.step import to_device
from tunesmith.errors import UserError
from tunesmith.eval.generate import Sampling
from tunesmith.methods.distill_losses import chunked, divergence, topk_forward_kl
from tunesmith.methods.distill_teachers import (
    SCORES,
    EndpointTeacher,
    LoadedTeacher,
    is_endpoint,
)
from tunesmith.methods.logprobs import head_token_logprobs, row_of_token, token_logprob_inputs
from tunesmith.methods.rollout import batch_digest, sample_records, sample_replies
from tunesmith.methods.sft import SFT

if TYPE_CHECKING:
    from rich.console import Console
    from torch.nn import Module
    from transformers import PreTrainedTokenizerBase

    from tunesmith.config.schema import RunConfig
    from tunesmith.data.batch import Batch
    from tunesmith.engine.method import Setup

TOPK_KEYS = ("teacher_topk_ids", "teacher_topk_logps")


class Distillation(SFT):
    """SFT whose loss is, in the share `distill.kd_ratio`, the divergence from a teacher's
    next-token distributions (`distill.*`)."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        d = config.distill
        self.logs_samples = self.logs_samples or d.on_policy > 0  # the student's replies, token by token
        self.config = d
        self.teacher_ref, self.kind, self.beta, self.temperature = d.teacher, d.loss, d.beta, d.temperature
        self.kd_ratio, self.topk, self.chunk = d.kd_ratio, d.teacher_topk, d.chunk
        self.on_policy, self.seed = d.on_policy, config.train.seed
        self.sampling = Sampling(max_new_tokens=d.max_new_tokens, temperature=d.sample_temperature)
        sources = [src.path for src in config.data.train]
        # (reference, weight, index of the data.train source it teaches or None): one, or several
        self.specs: list[tuple[str, float, int | None]] = [
            (t.teacher, t.weight, sources.index(t.source) if t.source is not None else None) for t in d.teachers
        ]
        if not self.specs:
            assert d.teacher is not None  # the config asks for distill.teacher or distill.teachers
            self.specs = [(d.teacher, 1.0, None)]
        self.teachers: list[Any] = []  # loaded in prepare, one per spec
        self.vocab: int | None = None  # logits compared over the shared tokenizer's ids

    @property
    def teacher(self) -> Any:
        """The one teacher, when there is exactly one."""
        return self.teachers[0] if len(self.teachers) == 1 else None

    # --- set-up the run does once -----------------------------------------------------------
    def prepare(self, setup: Setup) -> None:
        from tunesmith.model.load import load_for_inference
        from tunesmith.runtime.precision import inference_dtype

        super().prepare(setup)
        tokenizer, cfg = setup.tokenizer, setup.cfg
        self.vocab = len(tokenizer)
        if self.teacher_ref and is_endpoint(self.teacher_ref):
            d = self.config
            self.teachers = [
                EndpointTeacher(self.teacher_ref, d.teacher_model, d.api_key_env, Path(setup.run_dir) / SCORES)
            ]
            return
        for reference, _, _ in self.specs:
            teacher, teacher_tok = load_for_inference(reference, dtype=inference_dtype(cfg.train.precision))
            check_same_tokenizer(tokenizer, teacher_tok, reference)
            teacher.requires_grad_(False)
            self.teachers.append(LoadedTeacher(teacher, reference))
        if self.topk:
            attach_topk(self, setup.features, tokenizer, cfg, setup.console)
            self.teachers = []  # the cache stands in for it: its memory goes back for training

    # --- features -> batch ------------------------------------------------------------------
    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        batch = super().collate(features, tokenizer)
        if all(TOPK_KEYS[0] in f for f in features):
            batch["teacher_topk_ids"] = torch.cat([f["teacher_topk_ids"] for f in features])
            batch["teacher_topk_logps"] = torch.cat([f["teacher_topk_logps"] for f in features])
        if self.on_policy > 0 and self.chooses_on_policy(features):
            batch["prompts"] = [prompt_of(f) for f in features]
            batch["rollout"] = {}  # the student's replies, sampled in `rollout`
        if len(self.specs) > 1:
            batch["teacher_weights"] = torch.tensor([self.teacher_weights(f.get("data_source")) for f in features])
        return batch

    def teacher_weights(self, source: int | None) -> list[float]:
        """Each teacher's share of an example's divergence: the teachers named for its data source,
        else those named for none, else all (validation and replay examples), by their weights."""
        named = [w if s == source else 0.0 for _, w, s in self.specs]
        if source is None or not any(named):
            named = [w if s is None else 0.0 for _, w, s in self.specs]
        if not any(named):
            named = [w for _, w, _ in self.specs]
        return [w / sum(named) for w in named]

    def chooses_on_policy(self, features: list[dict[str, Any]]) -> bool:
        """Whether this batch is one of the λ share: a hash of its tokens and the seed, the same
        however often (and after whatever resume) the batch comes."""
        return batch_digest(features, str(self.seed)) / 2**64 < self.on_policy

    # --- batch -> loss ----------------------------------------------------------------------
    def rollout(self, model: Module, batch: Batch) -> None:
        """Training only (validation measures the data's replies): the student's own replies to
        an on-policy batch's prompts; then SFT's (self-distillation's general prompts)."""
        if "rollout" in batch and model.training:
            assert self.tokenizer is not None  # set in prepare
            batch["rollout"]["batch"] = sample_replies(model, self.tokenizer, batch["prompts"], self.sampling)[0]
        super().rollout(model, batch)

    def task_loss(self, model: Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if "rollout" in batch and model.training:  # validation measures the data's replies, every batch
            return self._on_policy_loss(model, batch)
        if self.teachers and not self.teachers[0].whole_distribution:
            return super().task_loss(model, batch)  # an endpoint knows no distributions: the data's tokens, by SFT
        head, rows, targets = token_logprob_inputs(model, batch)
        project: Callable[[torch.Tensor], torch.Tensor] = head if head is not None else (lambda r: r)
        vocab = self.vocab

        def ce(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(project(r).float(), t, reduction="sum")

        if TOPK_KEYS[0] in batch:

            def kd(r: torch.Tensor, ids: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
                return topk_forward_kl(project(r)[:, :vocab], ids.long(), logps, self.temperature).sum()

            kd_sum = chunked(kd, rows, batch["teacher_topk_ids"], batch["teacher_topk_logps"], chunk=self.chunk)
        else:
            kd_sum = self._live_divergence(project, rows, batch)
        ce_sum = chunked(ce, rows, targets, chunk=self.chunk)
        total = self.kd_ratio * kd_sum + (1 - self.kd_ratio) * ce_sum
        with torch.no_grad():
            correct = sum(
                int((project(rows[i : i + self.chunk]).argmax(-1) == targets[i : i + self.chunk]).sum())
                for i in range(0, rows.shape[0], self.chunk)
            )
        return total, {"kd": float(kd_sum.detach()), "ce": float(ce_sum.detach()), "token_accuracy": float(correct)}

    def _on_policy_loss(self, model: Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        sampled = batch["rollout"]["batch"]
        n_sampled = sampled["n_items"]
        if n_sampled == 0:  # every reply empty (EOS at once): nothing to compare
            zero = next(p for p in model.parameters() if p.requires_grad).sum() * 0.0
            return zero, {"on_policy": float(batch["n_items"])}
        head, rows, targets = token_logprob_inputs(model, sampled)
        project: Callable[[torch.Tensor], torch.Tensor] = head if head is not None else (lambda r: r)
        if self.teachers[0].whole_distribution:
            # the replies' rows are the batch's rows: the same teachers
            outputs = self._teacher_outputs(sampled, batch.get("teacher_weights"))
            kd_sum = cast(
                torch.Tensor, sum(self._divergence_sum(project, rows, *out) for out in outputs)
            )  # one or more
            with torch.no_grad():
                student_logp = head_token_logprobs(head, rows, targets)[0].float()
                teacher_logp, per_token = self._teacher_view(project, rows, targets, outputs)
        else:  # only the sampled tokens' teacher log-probabilities: reverse KL's policy gradient
            student_logp = head_token_logprobs(head, rows, targets)[0].float()
            teacher_logp = self.teacher.token_logprobs(sampled)
            per_token = student_logp.detach() - teacher_logp  # the sampled reverse KL, token by token
            # value: Σ per-token KL; gradient: −Σ advantage ∇log p, advantage = −per_token
            kd_sum = per_token.sum() + (per_token * (student_logp - student_logp.detach())).sum()
            student_logp = student_logp.detach()
        scale = batch["n_items"] / n_sampled  # the batch weighs in the step as the data tokens it stands for
        if "samples" in batch:
            assert self.tokenizer is not None  # set in prepare
            records = sample_records(self.tokenizer, sampled, student_logp, teacher_logp, per_token)
            batch["samples"].extend({"kind": "on_policy", **r} for r in records)
        # metrics are logged per item: "on_policy" reads as the share of the window's items from such batches
        return kd_sum * scale, {"kd": float(kd_sum.detach()) * scale, "on_policy": float(batch["n_items"])}

    def _live_divergence(
        self, project: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """The summed divergence from the teacher(s), run now on `batch`, at the student's `rows`."""
        outputs = self._teacher_outputs(batch, batch.get("teacher_weights"))
        return cast(torch.Tensor, sum(self._divergence_sum(project, rows, *out) for out in outputs))  # one or more

    def _teacher_outputs(self, batch: Batch, weights: torch.Tensor | None) -> list[tuple[Any, ...]]:
        """(head, hidden rows at the trained positions, each position's weight or None) of every
        teacher that teaches a token of the batch, `weights` [rows, teachers] saying whose each
        row is; a teacher none of the rows has is not run."""
        if weights is None:
            return [(*self._teacher_rows(batch), None)]
        token_rows = row_of_token(batch)
        per_token = weights.to(token_rows.device)[token_rows]  # [trained tokens, teachers]
        return [(*t.rows(batch), per_token[:, i]) for i, t in enumerate(self.teachers) if per_token[:, i].any()]

    def _divergence_sum(
        self,
        project: Callable[[torch.Tensor], torch.Tensor],
        rows: torch.Tensor,
        t_head: Callable[[torch.Tensor], torch.Tensor],
        t_rows: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Σ divergence(student ‖ teacher) over the rows, each position's weighted by `weights`."""
        vocab = self.vocab

        def kd(r: torch.Tensor, tr: torch.Tensor, *w: torch.Tensor) -> torch.Tensor:
            d = divergence(
                project(r)[:, :vocab], t_head(tr)[:, :vocab], self.kind, beta=self.beta, temperature=self.temperature
            )
            return (d * w[0]).sum() if w else d.sum()

        return chunked(kd, rows, t_rows, *([weights] if weights is not None else []), chunk=self.chunk)

    def _teacher_view(
        self,
        project: Callable[[torch.Tensor], torch.Tensor],
        rows: torch.Tensor,
        targets: torch.Tensor,
        outputs: list[tuple[Any, ...]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the teacher's log-probability of each target, the divergence at each position), for the
        log; with several teachers, each position's weighted sums over its teachers."""
        logp_sum: torch.Tensor | float = 0.0
        div_sum: torch.Tensor | float = 0.0
        for t_head, t_rows, weights in outputs:
            logps, divs = [], []
            for i in range(0, rows.shape[0], self.chunk):
                s_logits = project(rows[i : i + self.chunk])[:, : self.vocab].float()
                t_logits = t_head(t_rows[i : i + self.chunk])[:, : self.vocab].float()
                logps.append(t_logits.log_softmax(-1).gather(1, targets[i : i + self.chunk, None])[:, 0])
                divs.append(divergence(s_logits, t_logits, self.kind, beta=self.beta, temperature=self.temperature))
            w = weights if weights is not None else 1.0
            logp_sum, div_sum = logp_sum + torch.cat(logps) * w, div_sum + torch.cat(divs) * w
        assert isinstance(logp_sum, torch.Tensor) and isinstance(div_sum, torch.Tensor)  # one teacher or more
        return logp_sum, div_sum

    def _teacher_rows(self, batch: Batch) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
        """The teacher's final hidden states at the batch's trained positions, and its head."""
        if self.teacher is None:
            raise RuntimeError("the run did not load the teacher (prepare)")
        rows: tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor] = self.teacher.rows(batch)
        return rows


def prompt_of(feature: dict[str, Any]) -> list[int]:
    """The tokens before the example's first trained token: what the student replies to."""
    first = next(i for i, label in enumerate(feature["labels"]) if label != IGNORE)
    return list(feature["input_ids"][:first])


def check_same_tokenizer(
    student_tok: PreTrainedTokenizerBase, teacher_tok: PreTrainedTokenizerBase, teacher_ref: str
) -> None:
    """Logits compare token by token: both models must read and write the same ids."""
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
        differ = next((tok for tok in sorted(set(s) | set(t)) if s.get(tok) != t.get(tok)), None)
        raise UserError(
            f"distill.teacher {teacher_ref}: its tokenizer differs from the student's ({len(t)} vs {len(s)} "
            f"tokens; first difference: {differ!r}); logit distillation needs the same tokenizer "
            "(sequence-level distillation does not: tunesmith distill generate)"
        )


def topk_cache_path(cfg: RunConfig, features: list[dict[str, Any]], k: int) -> Path:
    from tunesmith.model.identity import cache_dir, model_key
    from tunesmith.model.resolve import resolve

    assert cfg.distill.teacher is not None  # top-k caches one teacher's distributions
    h = hashlib.sha256(json.dumps([model_key(resolve(cfg.distill.teacher)), cfg.train.precision, k]).encode())
    for f in features:
        h.update(json.dumps([f["input_ids"], f["labels"]]).encode())
    return cache_dir() / f"teacher-top{k}-{h.hexdigest()[:20]}.safetensors"


def attach_topk(
    method: Distillation,
    features: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    cfg: RunConfig,
    console: Console,
) -> None:
    """The teacher's top-k log-probs at every trained position of every feature, computed once
    (batched, no gradients) or read back from the cache; stored with each feature."""
    from safetensors.torch import load_file, save_file

    from tunesmith.data.collate import collate_tokens
    from tunesmith.runtime.precision import autocast, device, resolve_precision

    k = method.topk
    assert k is not None  # called for distill.teacher_topk
    path = topk_cache_path(cfg, features, k)
    if path.is_file():
        cached = load_file(path)
        ids, logps, offsets = cached["ids"], cached["logps"], cached["offsets"].tolist()
    else:
        console.print(f"teacher top-{k}: one pass over {len(features)} examples (cached in {path.parent})")
        dev = device()  # (the teacher moves there with the first batch)
        precision = resolve_precision(cfg.train.precision, dev)
        parts_ids: list[torch.Tensor] = []
        parts_logps: list[torch.Tensor] = []
        offsets = [0]
        for start in range(0, len(features), cfg.train.batch_size):
            chunk = features[start : start + cfg.train.batch_size]
            batch = collate_tokens(chunk, tokenizer.pad_token_id)
            batch = to_device(batch, dev)
            with torch.no_grad(), autocast(precision, dev):
                head, rows = method._teacher_rows(batch)
                for i in range(0, rows.shape[0], method.chunk):
                    top = F.log_softmax(head(rows[i : i + method.chunk])[:, : method.vocab].float(), -1).topk(k, -1)
                    parts_ids.append(top.indices.to(torch.int32).cpu())
                    parts_logps.append(top.values.cpu())
            for f in chunk:
                offsets.append(offsets[-1] + sum(1 for label in f["labels"][1:] if label != IGNORE))
        ids, logps = torch.cat(parts_ids), torch.cat(parts_logps)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(path) as tmp:  # (a temporary of each process's own: the ranks may all write it)
            save_file({"ids": ids, "logps": logps, "offsets": torch.tensor(offsets)}, str(tmp))
    for f, a, b in zip(features, offsets[:-1], offsets[1:]):
        f[TOPK_KEYS[0]], f[TOPK_KEYS[1]] = ids[a:b], logps[a:b]
