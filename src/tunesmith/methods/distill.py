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
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

import torch
import torch.nn.functional as F

from tunesmith.data.chat import IGNORE
from tunesmith.errors import UserError
from tunesmith.eval.generate import Sampling
from tunesmith.methods.logprobs import token_logprob_inputs
from tunesmith.methods.distill_losses import chunked, divergence, topk_forward_kl
from tunesmith.methods.rollout import sample_replies
from tunesmith.methods.sft import SFT

TOPK_KEYS = ("teacher_topk_ids", "teacher_topk_logps")


class Distillation(SFT):
    """SFT whose loss is, in the share `distill.kd_ratio`, the divergence from a teacher's
    next-token distributions (`distill.*`)."""

    def __init__(self, config):
        super().__init__(config)
        d = config.distill
        self.teacher_ref, self.kind, self.beta, self.temperature = d.teacher, d.loss, d.beta, d.temperature
        self.kd_ratio, self.topk, self.chunk = d.kd_ratio, d.teacher_topk, d.chunk
        self.on_policy, self.seed = d.on_policy, config.train.seed
        self.sampling = Sampling(max_new_tokens=d.max_new_tokens, temperature=d.sample_temperature)
        self.teacher = None  # loaded in prepare
        self.vocab = None  # logits compared over the shared tokenizer's ids
        self.tokenizer = None

    # --- set-up the run does once -----------------------------------------------------------
    def prepare(self, model, tokenizer, features, run_dir, cfg, console) -> None:
        from tunesmith.model.load import load_for_inference
        from tunesmith.runtime.precision import inference_dtype

        teacher, teacher_tok = load_for_inference(self.teacher_ref, dtype=inference_dtype(cfg.train.precision))
        check_same_tokenizer(tokenizer, teacher_tok, self.teacher_ref)
        teacher.requires_grad_(False)
        self.teacher, self.vocab, self.tokenizer = teacher, len(tokenizer), tokenizer
        if self.topk:
            attach_topk(self, features, tokenizer, cfg, console)
            self.teacher = None  # the cache stands in for it: its memory goes back for training

    # --- features -> batch ------------------------------------------------------------------
    def collate(self, features: list[dict], tokenizer) -> dict:
        batch = super().collate(features, tokenizer)
        if all(TOPK_KEYS[0] in f for f in features):
            for key in TOPK_KEYS:
                batch[key] = torch.cat([f[key] for f in features])
        if self.on_policy > 0 and self.chooses_on_policy(features):
            batch["prompts"] = [prompt_of(f) for f in features]
            batch["rollout"] = {}  # the student's replies, sampled when the loss is first asked for
        return batch

    def chooses_on_policy(self, features: list[dict]) -> bool:
        """Whether this batch is one of the λ share: a hash of its tokens and the seed, the same
        however often (and after whatever resume) the batch comes."""
        digest = hashlib.sha256(str(self.seed).encode())
        for f in features:
            digest.update(struct.pack(f"<{len(f['input_ids'])}q", *f["input_ids"]))
        return int.from_bytes(digest.digest()[:8], "little") / 2**64 < self.on_policy

    # --- batch -> loss ----------------------------------------------------------------------
    def loss(self, model, batch: dict):
        if "rollout" in batch and model.training:  # validation measures the data's replies, every batch
            return self._on_policy_loss(model, batch)
        head, rows, targets = token_logprob_inputs(model, batch)
        project = head if head is not None else (lambda r: r)
        vocab = self.vocab

        def ce(r, t):
            return F.cross_entropy(project(r).float(), t, reduction="sum")

        if TOPK_KEYS[0] in batch:
            def kd(r, ids, logps):
                return topk_forward_kl(project(r)[:, :vocab], ids.long(), logps, self.temperature).sum()

            kd_sum = chunked(kd, rows, batch[TOPK_KEYS[0]], batch[TOPK_KEYS[1]], chunk=self.chunk)
        else:
            kd_sum = self._live_divergence(project, rows, batch)
        ce_sum = chunked(ce, rows, targets, chunk=self.chunk)
        total = self.kd_ratio * kd_sum + (1 - self.kd_ratio) * ce_sum
        with torch.no_grad():
            correct = sum(int((project(rows[i : i + self.chunk]).argmax(-1) == targets[i : i + self.chunk]).sum())
                          for i in range(0, rows.shape[0], self.chunk))
        return total, {"kd": float(kd_sum.detach()), "ce": float(ce_sum.detach()), "token_accuracy": float(correct)}

    def _on_policy_loss(self, model, batch: dict):
        rollout = batch["rollout"]
        if not rollout:
            rollout["batch"] = sample_replies(model, self.tokenizer, batch["prompts"], self.sampling)[0]
        sampled = rollout["batch"]
        n_sampled = sampled["n_items"]
        if n_sampled == 0:  # every reply empty (EOS at once): nothing to compare
            zero = next(p for p in model.parameters() if p.requires_grad).sum() * 0.0
            return zero, {"on_policy": float(batch["n_items"])}
        head, rows, _ = token_logprob_inputs(model, sampled)
        kd_sum = self._live_divergence(head if head is not None else (lambda r: r), rows, sampled)
        scale = batch["n_items"] / n_sampled  # the batch weighs in the step as the data tokens it stands for
        # metrics are logged per item: "on_policy" reads as the share of the window's items from such batches
        return kd_sum * scale, {"kd": float(kd_sum.detach()) * scale, "on_policy": float(batch["n_items"])}

    def _live_divergence(self, project, rows: torch.Tensor, batch: dict) -> torch.Tensor:
        """The summed divergence from the teacher, run now on `batch`, at the student's `rows`."""
        t_head, t_rows = self._teacher_rows(batch)
        vocab = self.vocab

        def kd(r, tr):
            return divergence(project(r)[:, :vocab], t_head(tr)[:, :vocab], self.kind, beta=self.beta,
                              temperature=self.temperature).sum()

        return chunked(kd, rows, t_rows, chunk=self.chunk)

    def _teacher_rows(self, batch: dict):
        """The teacher's final hidden states at the batch's trained positions, and its head."""
        if self.teacher is None:
            raise RuntimeError("the run did not load the teacher (prepare)")
        dev = batch["input_ids"].device
        if next(self.teacher.parameters()).device != dev:
            self.teacher.to(dev)
        with torch.no_grad():
            head, rows, _ = token_logprob_inputs(self.teacher, batch)
        return (head if head is not None else (lambda r: r)), rows


def prompt_of(feature: dict) -> list[int]:
    """The tokens before the example's first trained token: what the student replies to."""
    first = next(i for i, label in enumerate(feature["labels"]) if label != IGNORE)
    return list(feature["input_ids"][:first])


def check_same_tokenizer(student_tok, teacher_tok, teacher_ref: str) -> None:
    """Logits compare token by token: both models must read and write the same ids."""
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
        differ = next((tok for tok in sorted(set(s) | set(t)) if s.get(tok) != t.get(tok)), None)
        raise UserError(f"distill.teacher {teacher_ref}: its tokenizer differs from the student's ({len(t)} vs {len(s)} "
                        f"tokens; first difference: {differ!r}); logit distillation needs the same tokenizer "
                        "(sequence-level distillation does not: tunesmith distill generate)")


def topk_cache_path(cfg, features: list[dict], k: int):
    from tunesmith.model.identity import cache_dir, model_key
    from tunesmith.model.resolve import resolve

    h = hashlib.sha256(json.dumps([model_key(resolve(cfg.distill.teacher)), cfg.train.precision, k]).encode())
    for f in features:
        h.update(json.dumps([f["input_ids"], f["labels"]]).encode())
    return cache_dir() / f"teacher-top{k}-{h.hexdigest()[:20]}.safetensors"


def attach_topk(method: Distillation, features: list[dict], tokenizer, cfg, console) -> None:
    """The teacher's top-k log-probs at every trained position of every feature, computed once
    (batched, no gradients) or read back from the cache; stored with each feature."""
    from safetensors.torch import load_file, save_file

    from tunesmith.data.collate import collate_tokens
    from tunesmith.runtime.precision import autocast, device, resolve_precision

    k = method.topk
    path = topk_cache_path(cfg, features, k)
    if path.is_file():
        cached = load_file(path)
        ids, logps, offsets = cached["ids"], cached["logps"], cached["offsets"].tolist()
    else:
        console.print(f"teacher top-{k}: one pass over {len(features)} examples (cached in {path.parent})")
        dev = device()
        method.teacher.to(dev)
        precision = resolve_precision(cfg.train.precision, dev)
        parts_ids, parts_logps, offsets = [], [], [0]
        for start in range(0, len(features), cfg.train.batch_size):
            chunk = features[start : start + cfg.train.batch_size]
            batch = collate_tokens(chunk, tokenizer.pad_token_id)
            batch = {key: v.to(dev) if torch.is_tensor(v) else v for key, v in batch.items()}
            with torch.no_grad(), autocast(precision, dev):
                head, rows = method._teacher_rows(batch)
                for i in range(0, rows.shape[0], method.chunk):
                    top = F.log_softmax(head(rows[i : i + method.chunk])[:, : method.vocab].float(), -1).topk(k, -1)
                    parts_ids.append(top.indices.to(torch.int32).cpu())
                    parts_logps.append(top.values.cpu())
            for f in chunk:
                offsets.append(offsets[-1] + sum(1 for label in f["labels"][1:] if label != -100))
        ids, logps = torch.cat(parts_ids), torch.cat(parts_logps)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # the ranks of a distributed run may all write it
        save_file({"ids": ids, "logps": logps, "offsets": torch.tensor(offsets)}, str(tmp))
        tmp.replace(path)
    for f, a, b in zip(features, offsets[:-1], offsets[1:]):
        f[TOPK_KEYS[0]], f[TOPK_KEYS[1]] = ids[a:b], logps[a:b]
