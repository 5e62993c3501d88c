"""A smaller student of the same architecture: a subset of the teacher's decoder layers, with
their weights (`tunesmith student create`).

Embeddings, final norm and head are kept, so the student starts as a shallower version of the
teacher rather than from noise, shares its tokenizer (what logit distillation needs) and loads
with plain `AutoModelForCausalLM`. Which layers stay:
  uniform  evenly spaced, first and last included (the usual choice: each stage of the stack kept)
  first    the lowest N
  last     the highest N
"""

from __future__ import annotations

from pathlib import Path

from tunesmith import atomic
from tunesmith.errors import UserError

STRATEGIES = ("uniform", "first", "last")


def kept_layers(total: int, n: int, strategy: str) -> list[int]:
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    if not 1 <= n <= total:
        raise UserError(f"--layers {n}: the teacher has {total} decoder layers; keep between 1 and {total}")
    if strategy == "first":
        return list(range(n))
    if strategy == "last":
        return list(range(total - n, total))
    if n == 1:
        return [0]
    return sorted({round(i * (total - 1) / (n - 1)) for i in range(n)})


def decoder(model):
    """The module holding the decoder layer list (`model.model` in Llama-style models)."""
    import torch

    from tunesmith.model.peft_wrapping import unwrap

    base = unwrap(model)
    inner = getattr(base, base.base_model_prefix, None)
    if not isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):
        raise UserError(f"{type(base).__name__}: no decoder layer list (model.layers) to take a subset of")
    return inner


def create_student(teacher: str, layers: int, out: Path, strategy: str = "uniform") -> dict:
    """Write the student to `out` (atomically); returns what was kept."""
    import torch

    from tunesmith.model.load import load_for_inference, quiet_transformers

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: student target exists and is not empty")
    model, tokenizer = load_for_inference(teacher, dtype=torch.float32, merge=True)
    if hasattr(model, "peft_config"):
        raise UserError(
            f"{teacher}: a {model.active_peft_config.peft_type.value.lower()} adapter cannot fold into the "
            "weights; export the teacher merged first"
        )
    model = model.cpu()
    stack = decoder(model).layers
    total = len(stack)
    keep = kept_layers(total, layers, strategy)
    new_stack = torch.nn.ModuleList([stack[i] for i in keep])
    for new_index, layer in enumerate(new_stack):  # the KV cache is indexed by each attention's layer_idx
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_index
    decoder(model).layers = new_stack
    config = model.config
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    parameters = sum(p.numel() for p in model.parameters())
    with atomic.folder(out) as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {
        "out": str(out),
        "teacher": teacher,
        "teacher_layers": total,
        "layers": keep,
        "strategy": strategy,
        "parameters": parameters,
    }
