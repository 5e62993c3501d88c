"""The models the service answers as: each base it trains on, and every fine-tune (a finished
job's model, each of its checkpoints) as an adapter hot-loaded over its base's one copy on first
use, with no restart. A caller sees the bases and its own tenant's fine-tunes only."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from tunesmith.serve.models import ServedModels, load_served
from tunesmith.service.store import Store


class ServiceCatalog:
    def __init__(
        self,
        store: Store,
        bases: dict[str, str],
        dtype: torch.dtype = torch.float32,
        kv_budget_mb: float | None = None,
        max_rows: int = 32,
    ):
        self.store, self.bases, self.dtype = store, bases, dtype  # base id -> model reference
        self.kv_budget_mb, self.max_rows = kv_budget_mb, max_rows  # each base's generation engine
        self.holders: dict[str, ServedModels] = {}
        self.lock = threading.Lock()  # loading a base happens once

    def _base(self, base_id: str) -> ServedModels:
        with self.lock:
            if base_id not in self.holders:
                self.holders[base_id] = load_served(
                    self.bases[base_id],
                    [],
                    dtype=self.dtype,
                    kv_budget_mb=self.kv_budget_mb,
                    max_rows=self.max_rows,
                    served_as=base_id,
                )
            return self.holders[base_id]

    def visible_ids(self, caller: str | None) -> list[str]:
        return [*self.bases, *(m["id"] for m in self.store.models(caller))]

    def parent(self, model_id: str) -> str | None:
        if model_id in self.bases:
            return None
        found = self.store.model(model_id)
        return found["base"] if found else None

    def holder(self, model_id: str, caller: str | None) -> ServedModels | None:
        if model_id in self.bases:
            return self._base(model_id)
        found = self.store.model(model_id)
        if found is None or (caller is not None and found["tenant"] != caller) or found["base"] not in self.bases:
            return None
        served = self._base(found["base"])
        with served.lock:
            if model_id not in served.adapters:
                served.add_adapter(model_id, Path(found["path"]), served.tokenizers[served.base_id])
        return served

    def engines(self) -> dict:
        """Each loaded base's started generation engine, by base model id (for /metrics)."""
        with self.lock:
            holders = list(self.holders.values())
        return {k: v for served in holders for k, v in served.engines().items()}

    def unload(self, model_id: str) -> None:
        """Drop a fine-tune that was deleted (or whose checkpoint is gone) from its base's memory."""
        for served in self.holders.values():
            with served.lock:
                served.remove_adapter(model_id)
