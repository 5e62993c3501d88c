"""A model whose training loop the client owns (the Tinker API): the client decides the data, the
loss and when to step; this object holds the model and the optimizer between its calls.

It is built as `tunesmith train` builds a model (`build_model`: the base, the LoRA adapter or
full fine-tuning, the precision), and its gradients and updates are the engine's own
(`engine/step.py`'s `backward` and `update`): `forward_backward` adds the gradient of the named
loss's sum to what earlier calls accumulated, `optim_step` applies it with the client's Adam
parameters. States and sampler weights are written as the engine's checkpoints and adapter folders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith import atomic
from tunesmith.config import RunConfig
from tunesmith.engine import checkpoint
from tunesmith.engine.distributed import clip_gradients
from tunesmith.engine.loop import ready_to_train, training_paths
from tunesmith.engine.passes import pass_budget, split_by_tokens
from tunesmith.engine.schedule import param_groups
from tunesmith.engine.step import backward, forward_only, update
from tunesmith.errors import UserError
from tunesmith.methods.client_loss import ClientLoss, Datum
from tunesmith.model.adapters import TARGET_PRESETS, save_adapter_folder
from tunesmith.model.load import load_tokenizer, tokenizer_dir
from tunesmith.model.peft_wrapping import unwrap
from tunesmith.model.resolve import resolve
from tunesmith.run.build import build_model
from tunesmith.runtime.precision import device, resolve_precision

LORA_ALPHA = 32.0  # tunesmith's default adapter.alpha


@dataclass
class ModelSpec:
    """What a client asked for: the base, and LoRA's rank and trained parts (rank None: full
    fine-tuning, every weight trains)."""

    base: str
    rank: int | None = 32
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True
    seed: int = 0
    precision: str = "auto"

    def run_config(self, targets: list[str] | None) -> RunConfig:
        adapter = (
            {"type": "lora", "r": self.rank, "alpha": LORA_ALPHA, "targets": targets}
            if self.rank is not None
            else {"type": "none"}
        )
        return RunConfig.model_validate(
            {
                "name": "client-loop",
                "model": self.base,
                "adapter": adapter,
                "data": {"train": [{"path": "(the client's own loop)"}]},
                "train": {
                    "max_steps": 1,
                    "precision": self.precision,
                    "seed": self.seed,
                    "max_grad_norm": None,
                    "weight_decay": 0.0,
                    "schedule": "constant",
                    "warmup": 0,
                },
            }
        )


def lora_targets(model, spec: ModelSpec) -> list[str]:
    """Module names for LoRA: attention and MLP projections, and the output head, as asked."""
    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    wanted = [
        *(TARGET_PRESETS["attention"] if spec.train_attn else ()),
        *(TARGET_PRESETS["mlp"] if spec.train_mlp else ()),
    ]
    targets = [t for t in wanted if t in present]
    head = unwrap(model).get_output_embeddings()
    if spec.train_unembed and isinstance(head, torch.nn.Linear):
        targets += [name for name, m in model.named_modules() if m is head]
    if not targets:
        raise UserError("lora_config: train_attn, train_mlp and train_unembed are all off: nothing would train")
    return targets


class ClientLoopModel:
    """The model, its optimizer and the step count between a client's calls (one per Tinker model)."""

    def __init__(self, spec: ModelSpec):
        from tunesmith.model.load import load_base

        self.spec = spec
        resolved = resolve(spec.base)
        self.tokenizer = load_tokenizer(tokenizer_dir(resolved))
        targets = None
        if spec.rank is not None:  # the targets depend on the architecture: read them off the bare base
            probe = load_base(resolved.path, torch.float32, None)
            targets = lora_targets(probe, spec)
            del probe
        self.config = spec.run_config(targets)
        self.dev = device()
        self.precision = resolve_precision(spec.precision, self.dev)
        self.model = build_model(self.config, resolved, self.tokenizer)
        ready_to_train(self.model, self.precision, self.dev)
        training_paths(self.model)  # as in every training run, for this model's whole life
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, self.config.train), lr=1e-4, betas=(0.9, 0.95), eps=1e-12
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: 1.0
        )  # the client sets each step's lr
        self.vocab = unwrap(self.model).get_input_embeddings().weight.shape[0]
        self.steps = 0
        self.pending_finite = True  # every loss accumulated since the last step was finite

    def _features(self, method: ClientLoss, data: list[Datum]) -> list[dict]:
        """Every datum checked and encoded before any pass runs: a bad one changes nothing."""
        if not data:
            raise UserError("forward_backward: no datums")
        for i, d in enumerate(data):
            top = max(d.tokens, default=0)
            targets = d.inputs.get("target_tokens")
            if targets is not None and targets.size:
                top = max(top, int(targets.max()))
            if top >= self.vocab or min(d.tokens, default=0) < 0:
                raise UserError(f"datum {i}: token ids must be in 0..{self.vocab - 1} (this model's vocabulary)")
        return [method.features(d) for d in data]

    def forward_backward(
        self, data: list[Datum], loss_fn: str, config: dict | None = None, forward: bool = False
    ) -> tuple[list, dict]:
        """Each datum's target log-probabilities and {"loss:sum": the loss}; unless `forward`,
        the gradient of that sum is added to the ones accumulated for the next `optim_step`.
        The datums go through in passes of at most `tunesmith train`'s tokens per pass (the loss
        is a sum, so the gradient is the same), which bounds memory for any request size."""
        method = ClientLoss(loss_fn, config)
        features = self._features(method, data)
        parts = split_by_tokens(list(range(len(data))), [len(d.tokens) + 1 for d in data], pass_budget(None, self.dev))
        outputs, total = [], 0.0
        for part in parts:
            batch = method.collate([features[i] for i in part], self.tokenizer)
            if forward:
                loss, _ = forward_only(self.model, method, batch, self.precision, self.dev)
            else:
                loss, _ = backward(self.model, method, batch, self.precision, self.dev, 1.0)
                self.pending_finite = self.pending_finite and math.isfinite(loss)
            outputs += method.outputs
            total += loss
        return outputs, {"loss:sum": total}

    def optim_step(
        self,
        learning_rate: float,
        beta1: float = 0.9,
        beta2: float = 0.95,
        eps: float = 1e-12,
        weight_decay: float = 0.0,
        grad_clip_norm: float = 0.0,
    ) -> dict:
        """Apply the accumulated gradients with AdamW and these parameters (weight decay on
        matrices only, as in `tunesmith train`; grad_clip_norm 0: no clipping)."""
        for group in self.optimizer.param_groups:
            group.update(lr=learning_rate, betas=(beta1, beta2), eps=eps)
            group["weight_decay"] = weight_decay if group["params"][0].ndim >= 2 else 0.0
        if all(p.grad is None for p in self.params):
            grad_norm = clip_gradients(self.params, float("inf"))
            skipped = True  # nothing accumulated: no step (Adam's state would still move)
        else:
            grad_norm, skipped = update(self.params, self.optimizer, grad_clip_norm or None, self.pending_finite)
        self.pending_finite = True
        if not skipped:
            self.steps += 1
        return {"grad_norm:mean": float(grad_norm), "skipped": float(skipped), "step": float(self.steps)}

    def save_state(self, folder: Path) -> None:
        checkpoint.save_named(folder, self.model, self.optimizer, self.scheduler, {"step": self.steps})

    def load_state(self, folder: Path, optimizer: bool) -> None:
        """Weights (and with `optimizer` the Adam moments and step count) from `save_state`."""
        if not (folder / "trainable.safetensors").is_file():
            raise UserError(f"{folder.name}: not a saved training state")
        for p in self.params:
            p.grad = None
        if optimizer:
            self.steps = checkpoint.load(folder, self.model, self.optimizer, self.scheduler).get("step", 0)
        else:
            checkpoint.load_trainable(self.model, folder / "trainable.safetensors")

    def save_sampler(self, folder: Path) -> None:
        """Weights a sampler (and the OpenAI chat API) can serve: the LoRA adapter folder, or for
        full fine-tuning the whole model, each with its tokenizer."""
        with atomic.folder(folder) as tmp:
            tmp.mkdir()
            if not save_adapter_folder(self.model, checkpoint.trainable_state(self.model), tmp):
                unwrap(self.model).save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
