"""What a server holds: one copy of a base model and any number of adapters over it, each with a
name the `model` field of a request selects, and the generation engine that answers for all of
them: requests for the base and for any adapter decode together in one batch
(`generation/engine.py`). The lock guards the model: the engine holds it for each step, and an
adapter is added or removed between steps."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from tunesmith.errors import UserError
from tunesmith.model.embedded import EMBEDDED
from tunesmith.model.load import load_base, load_tokenizer, tokenizer_dir
from tunesmith.model.resolve import Resolved, resolve

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
SERVABLE_ADAPTERS = ("LORA", "IA3")


class ModelGone(LookupError):
    """The model a request named was removed while the request waited (a DELETE raced it): 404."""

    def __init__(self, model_id: str):
        super().__init__(model_id)
        self.model_id = model_id


KV_SHARE_OF_FREE_MEMORY = 0.25  # the default KV budget: this share of the memory free at start


def default_kv_budget(max_rows: int, context_length: int, token_bytes: int) -> int:
    """Bytes for the KV cache when none is given: a quarter of the free memory, or what
    `max_rows` full-context rows need if that is less."""
    import psutil

    free = psutil.virtual_memory().available * KV_SHARE_OF_FREE_MEMORY
    return int(min(free, max_rows * context_length * token_bytes))


class Catalog(Protocol):
    """What the server asks of the models it serves: one `ServedModels` (a base and its adapters),
    or the service's catalog of bases and each tenant's tuned models."""

    def engines(self) -> dict: ...
    def visible_ids(self, caller: str | None) -> list[str]: ...
    def holder(self, model_id: str, caller: str | None) -> ServedModels | None: ...
    def parent(self, model_id: str) -> str | None: ...


@dataclass
class ServedModels:
    model: Any  # the base (a transformers model), or a PeftModel holding every adapter
    base_id: str
    tokenizers: dict[str, object]  # model id -> its tokenizer (an adapter run keeps its own copy)
    adapters: dict[str, Path] = field(default_factory=dict)  # model id -> adapter folder
    lock: threading.Lock = field(default_factory=threading.Lock)
    kv_budget_mb: float | None = None  # None: default_kv_budget
    max_rows: int = 32  # requests decoding together
    _engine: object = None
    _engine_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def engine(self):
        """The generation engine for this base and its adapters (started on first use)."""
        with self._engine_lock:
            if self._engine is None:
                from tunesmith.generation.engine import GenerationEngine
                from tunesmith.generation.kv_arena import bytes_per_token

                dtype = next(self.model.parameters()).dtype
                if self.kv_budget_mb is not None:
                    budget = int(self.kv_budget_mb * 2**20)
                else:
                    budget = default_kv_budget(
                        self.max_rows, self.context_length, bytes_per_token(self.model.config, dtype)
                    )
                self._engine = GenerationEngine(self, budget, max_rows=self.max_rows)
                self._engine.start()
            return self._engine

    def engines(self) -> dict:
        """The started generation engine, by base model id (for /metrics)."""
        return {self.base_id: self._engine} if self._engine is not None else {}

    def adapter_key(self, model_id: str | None) -> str | None:
        """The PEFT adapter name `model_id` is served by (None: the base); ModelGone once removed."""
        if model_id is None or model_id == self.base_id:
            return None
        if model_id not in self.adapters:
            raise ModelGone(model_id)
        return peft_name(model_id)

    @property
    def ids(self) -> list[str]:
        return [self.base_id, *self.adapters]

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    # the catalog a server asks (serve/app.py): one holder answering for every caller
    def visible_ids(self, caller: str | None) -> list[str]:
        return self.ids

    def holder(self, model_id: str, caller: str | None) -> ServedModels | None:
        return self if model_id in self.ids else None

    def parent(self, model_id: str) -> str | None:
        return None if model_id == self.base_id else self.base_id

    def tokenizer(self, model_id: str):
        """The tokenizer of `model_id`, or ModelGone if it was removed meanwhile."""
        try:
            return self.tokenizers[model_id]
        except KeyError:
            raise ModelGone(model_id) from None

    def add_adapter(self, model_id: str, folder: Path, tokenizer) -> None:
        """Load the adapter in `folder` over the base as `model_id`, while the server runs; hold `lock`."""
        from peft import PeftModel

        if self.adapters:
            self.model.load_adapter(folder, adapter_name=peft_name(model_id))
        else:
            self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=peft_name(model_id))
            self.model.eval()
        self.model.to(next(self.model.parameters()).device)
        self.adapters[model_id] = folder
        self.tokenizers[model_id] = tokenizer

    def remove_adapter(self, model_id: str) -> None:
        """Drop the adapter served as `model_id`; hold `lock`."""
        if model_id not in self.adapters:
            return
        del self.adapters[model_id]
        self.tokenizers.pop(model_id, None)
        if self.adapters:
            self.model.delete_adapter(peft_name(model_id))
        else:
            self.model = self.model.unload()  # the last one: the plain base again


def peft_name(model_id: str) -> str:
    """The name PEFT keeps an adapter under: model ids may hold `.` and `:`, which a module name may not."""
    import hashlib

    return "adapter_" + hashlib.sha256(model_id.encode()).hexdigest()[:16]


def display_id(reference: str) -> str:
    """A short model id for a reference: the alias as given (also where an adapter names the
    alias's cached conversion, `<alias>-<content key>`), a folder or run by its name."""
    path = Path(reference.rstrip("/"))
    for alias in EMBEDDED:
        if reference == alias or re.fullmatch(re.escape(alias) + r"-[0-9a-f]{12}", path.name):
            return alias
    return path.name or reference


def parse_adapter_option(option: str) -> tuple[str, str]:
    name, sep, path = option.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--adapter {option}: expected NAME=PATH (a run directory or an adapter folder)")
    if not MODEL_NAME.match(name):
        raise UserError(f"--adapter {option}: the name may hold letters, digits and . _ : / - (up to 128)")
    return name, path


def _adapter_type(folder: Path) -> str:
    import json

    return str(json.loads((folder / "adapter_config.json").read_text()).get("peft_type", "")).upper()


def load_served(
    reference: str,
    adapters: list[tuple[str, str]],
    dtype: torch.dtype = torch.float32,
    kv_budget_mb: float | None = None,
    max_rows: int = 32,
    served_as: str | None = None,
) -> ServedModels:
    """The base of `reference` once (answering as `served_as`, default its display id), with
    `reference`'s own adapter (if it is an adapter run) and every NAME=PATH adapter loaded over it
    by name; its engine keeps `kv_budget_mb` of KV cache (None: a quarter of the free memory) for
    up to `max_rows` requests decoding together."""
    main = resolve(reference)
    named: list[tuple[str, Resolved]] = []
    if main.adapter is not None:
        import json

        base_ref = json.loads((main.adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        base_id = served_as or display_id(base_ref)
        named.append((display_id(reference), main))
    else:
        base_id = served_as or display_id(reference)
    for name, path in adapters:
        resolved = resolve(path)
        if resolved.adapter is None:
            raise UserError(
                f"--adapter {name}={path}: not an adapter (a full model is served on its own: tunesmith serve {path})"
            )
        if resolved.path != main.path:
            raise UserError(f"--adapter {name}={path}: trained on {resolved.path}, not on the served base {main.path}")
        named.append((name, resolved))
    seen, kinds = {base_id}, set()
    for name, resolved in named:
        if name in seen:
            raise UserError(f"model name '{name}' is used twice; give each adapter its own NAME")
        seen.add(name)
        assert resolved.adapter is not None  # named: adapter runs
        kind = _adapter_type(resolved.adapter)
        if kind not in SERVABLE_ADAPTERS:
            raise UserError(
                f"{resolved.reference}: a {kind.lower()} adapter cannot share a base with others; "
                "serve LoRA or IA3 adapters (or export this one merged)"
            )
        kinds.add(kind)
    if len(kinds) > 1:
        raise UserError(f"adapters of one kind per server (got {', '.join(sorted(kinds))})")

    model = load_base(main.path, dtype)
    tokenizers = {base_id: load_tokenizer(main.path)}
    folders: dict[str, Path] = {}
    if named:
        from peft import PeftModel

        for i, (name, resolved) in enumerate(named):
            assert resolved.adapter is not None  # named: adapter runs
            if i == 0:
                model = PeftModel.from_pretrained(model, resolved.adapter, adapter_name=peft_name(name))
            else:
                model.load_adapter(resolved.adapter, adapter_name=peft_name(name))
            tokenizers[name] = load_tokenizer(tokenizer_dir(resolved))
            folders[name] = Path(str(resolved.adapter))
    from tunesmith.runtime.precision import device

    model.to(device()).eval()
    return ServedModels(
        model=model,
        base_id=base_id,
        tokenizers=tokenizers,
        adapters=folders,
        kv_budget_mb=kv_budget_mb,
        max_rows=max_rows,
    )
