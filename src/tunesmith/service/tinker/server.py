"""What the Tinker API does, apart from HTTP: sessions, training models and their ordered calls,
futures, checkpoints, samplers. `routes.py` maps the client's requests onto these methods.

Work (creating a model, forward_backward, optim_step, saving and loading) runs on the model's
`OrderedWorker` and finishes a future; sampling runs on the catalog's generation engine in a
thread of its own. A saved sampler is registered as an `ft:` model of its tenant, so the OpenAI
chat API serves the same adapter.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError, first_line
from tunesmith.methods.client_loss import Datum
from tunesmith.run.client_loop import ClientLoopModel, ModelSpec
from tunesmith.service.tinker import wire
from tunesmith.service.tinker.futures import Futures, Outcome
from tunesmith.service.tinker.ordering import OrderedWorker
from tunesmith.service.tinker.runs import TinkerRuns, check_name
from tunesmith.service.tinker.sampling import SampleParams, sample

log = logging.getLogger("tunesmith.service.tinker")


SESSION_TIMEOUT_S = 600.0  # a session without a heartbeat for this long ends, and its models leave memory


class Lost(UserError):
    """A model whose process state is gone: the service restarted, or its session ended."""


class TinkerServer:
    def __init__(
        self, home: Path, bases: dict[str, str], catalog, store, precision: str = "auto", max_tokens: int = 1024
    ):
        self.runs = TinkerRuns(home / "tinker")
        self.bases, self.catalog, self.store = bases, catalog, store  # base id -> model reference
        self.precision, self.max_tokens = precision, max_tokens
        self.futures = Futures()
        self.sessions: dict[str, str] = {}  # session id -> tenant
        self.seen: dict[str, float] = {}  # session id -> its last heartbeat (monotonic)
        self.samplers: dict[str, dict] = {}  # sampling session id -> {tenant, base, model_id (None: the base), path}
        self.models: dict[str, ClientLoopModel | None] = {}  # model id -> the model (None while it is built)
        self.workers: dict[str, OrderedWorker] = {}
        self.full_models: dict[Path, Any] = {}  # sampler folder -> its ServedModels (full fine-tunes)
        self.compute = threading.Lock()
        self.lock = threading.Lock()

    # --- sessions ---------------------------------------------------------------------------------

    def create_session(self, tenant: str) -> str:
        self.end_idle_sessions()
        session_id = uuid.uuid4().hex[:16]
        with self.lock:
            self.sessions[session_id] = tenant
            self.seen[session_id] = time.monotonic()
        return session_id

    def own_session(self, session_id: str, tenant: str) -> None:
        if self.sessions.get(session_id) != tenant:
            raise LookupError(
                f"session {session_id}: no such session (sessions end when the service restarts "
                f"or after {SESSION_TIMEOUT_S:.0f} s without a heartbeat)"
            )

    def heartbeat(self, session_id: str, tenant: str) -> None:
        self.own_session(session_id, tenant)
        self.seen[session_id] = time.monotonic()

    def end_session(self, session_id: str, tenant: str) -> None:
        """The session's training models leave memory (their saved states stay on disk)."""
        self.own_session(session_id, tenant)
        with self.lock:
            del self.sessions[session_id]
            self.seen.pop(session_id, None)
            ended = [m for m in self.workers if m.startswith(f"{session_id}:")]
            for model_id in ended:
                for request_id in self.workers.pop(model_id).close():
                    self.futures.finish(request_id, Outcome(error=f"session {session_id} ended before this call ran"))
                self.models.pop(model_id, None)
            for sampler_id in [k for k in self.samplers if k.startswith(f"{session_id}:")]:
                del self.samplers[sampler_id]

    def end_idle_sessions(self) -> None:
        cutoff = time.monotonic() - SESSION_TIMEOUT_S
        for session_id, last in list(self.seen.items()):
            if last < cutoff and session_id in self.sessions:
                self.end_session(session_id, self.sessions[session_id])

    # --- futures ----------------------------------------------------------------------------------

    def _run(self, request_id: str, work: Callable[[], Outcome]) -> None:
        try:
            outcome = work()
        except UserError as e:
            outcome = Outcome(error=str(e), category="user")
        except Exception as e:  # the server's fault: say what failed, keep serving
            log.error("tinker request %s failed", request_id, exc_info=e)
            outcome = Outcome(error=f"{type(e).__name__}: {first_line(e, 300)}", category="server")
        self.futures.finish(request_id, outcome)

    def _queue(self, tenant: str, model_id: str, seq_id: int | None, work: Callable[[], Outcome]) -> str:
        worker = self._worker(model_id, tenant)
        request_id = self.futures.create(tenant, model_id)
        given = worker.submit(seq_id, request_id, lambda: self._run(request_id, work))
        if given != request_id:
            self.futures.finish(request_id, Outcome(json={}))  # a repeat: the first call answers
        return given

    def _thread(self, tenant: str, work: Callable[[], Outcome], model_id: str | None = None) -> str:
        request_id = self.futures.create(tenant, model_id)
        threading.Thread(target=self._run, args=(request_id, work), daemon=True).start()
        return request_id

    # --- training models --------------------------------------------------------------------------

    def _worker(self, model_id: str, tenant: str) -> OrderedWorker:
        self.runs.owned(model_id, tenant)  # (a LookupError for a model that is not the tenant's)
        with self.lock:
            worker = self.workers.get(model_id)
        if worker is None:
            raise Lost(
                f"model {model_id} is no longer in memory (its session ended or the service restarted); "
                "load a saved state (create_training_client_from_state) to go on"
            )
        return worker

    def _model(self, model_id: str) -> ClientLoopModel:
        model = self.models.get(model_id)
        if model is None:
            raise UserError(f"model {model_id} could not be created")
        return model

    def _known(self, base: str | None) -> str:
        if base not in self.bases:
            raise UserError(f"base_model {base!r}: not a model this service holds ({', '.join(self.bases)})")
        return base

    def _register(self, model_id: str, tenant: str, session_id: str, base: str, spec: ModelSpec) -> None:
        self.own_session(session_id, tenant)
        self._known(base)
        with self.lock:
            if model_id in self.workers:
                raise UserError(f"model {model_id} exists")
            self.runs.create(model_id, tenant, {"base": base, "session_id": session_id, "spec": spec.__dict__})
            self.models[model_id] = None
            self.workers[model_id] = OrderedWorker(model_id, self.compute)

    def spec_of(self, base: str, lora: dict | None, seed: int | None = None) -> ModelSpec:
        self._known(base)
        if lora is None:
            return ModelSpec(self.bases[base], rank=None, seed=seed or 0, precision=self.precision)
        rank = int(lora.get("rank", 0))
        if not 1 <= rank <= 1024:
            raise UserError("lora_config.rank: 1 to 1024")
        return ModelSpec(
            self.bases[base],
            rank=rank,
            train_attn=lora.get("train_attn", True),
            train_mlp=lora.get("train_mlp", True),
            train_unembed=lora.get("train_unembed", True),
            seed=lora.get("seed") or seed or 0,
            precision=self.precision,
        )

    def create_model(
        self, tenant: str, session_id: str, model_seq_id: int, base: str, lora: dict | None
    ) -> tuple[str, str]:
        model_id = f"{session_id}:train:{model_seq_id}"
        spec = self.spec_of(base, lora)
        self._register(model_id, tenant, session_id, base, spec)

        def build() -> Outcome:
            self.models[model_id] = ClientLoopModel(spec)
            return Outcome(json={"model_id": model_id, "type": "create_model"})

        return self._queue(tenant, model_id, None, build), model_id

    def info(self, model_id: str, tenant: str) -> dict:
        record = self.runs.owned(model_id, tenant)
        from tunesmith.model.load import tokenizer_dir
        from tunesmith.model.resolve import resolve

        spec = record["spec"]
        return {
            "type": "get_info",
            "model_id": model_id,
            "is_lora": spec["rank"] is not None,
            "lora_rank": spec["rank"],
            "model_name": record["base"],
            "model_data": {
                "arch": None,
                "model_name": record["base"],
                "tokenizer_id": str(tokenizer_dir(resolve(spec["base"]))),
            },
        }

    def forward_backward(self, tenant: str, request: dict) -> str:
        model_id = request["model_id"]
        data = [Datum(tokens, inputs) for tokens, inputs in request["data"]]

        def work() -> Outcome:
            outputs, metrics = self._model(model_id).forward_backward(
                data, request["loss_fn"], request["config"], forward=request["forward_only"]
            )
            return Outcome(
                json=wire.forward_backward_json(outputs, metrics), proto=wire.forward_backward_output(outputs, metrics)
            )

        return self._queue(tenant, model_id, request.get("seq_id"), work)

    def optim_step(self, tenant: str, model_id: str, seq_id: int | None, adam: dict) -> str:
        keys = {"learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm"}
        params = {k: float(v) for k, v in adam.items() if k in keys}
        if (
            params.get("learning_rate", 1e-4) < 0
            or not 0 <= params.get("beta1", 0.9) < 1
            or not 0 <= params.get("beta2", 0.95) < 1
        ):
            raise UserError("adam_params: learning_rate >= 0, 0 <= beta1, beta2 < 1")
        params.setdefault("learning_rate", 1e-4)

        def work() -> Outcome:
            return Outcome(json={"type": "optim_step", "metrics": self._model(model_id).optim_step(**params)})

        return self._queue(tenant, model_id, seq_id, work)

    def save_state(self, tenant: str, model_id: str, seq_id: int | None, name: str | None, overwrite: bool) -> str:
        def work() -> Outcome:
            model = self._model(model_id)
            cp = self.runs.new(model_id, "weights", name or f"step-{model.steps:06d}", overwrite)
            model.save_state(cp.folder)
            return Outcome(json={"type": "save_weights", "path": cp.path})

        return self._queue(tenant, model_id, seq_id, work)

    def load_state(self, tenant: str, model_id: str, seq_id: int | None, path: str, optimizer: bool) -> str:
        cp = self.runs.parse(path, tenant, "weights")

        def work() -> Outcome:
            self._model(model_id).load_state(cp.folder, optimizer)
            return Outcome(json={"type": "load_weights", "path": path})

        return self._queue(tenant, model_id, seq_id, work)

    def create_from_state(self, tenant: str, session_id: str, model_seq_id: int, path: str, optimizer: bool) -> str:
        """A new training model built like the one that saved `path`, loaded from it."""
        cp = self.runs.parse(path, tenant, "weights")
        source = self.runs.owned(cp.model_id, tenant)
        model_id = f"{session_id}:train:{model_seq_id}"
        spec = ModelSpec(**{**source["spec"], "precision": self.precision})
        self._register(model_id, tenant, session_id, source["base"], spec)

        def build() -> Outcome:
            model = ClientLoopModel(spec)
            model.load_state(cp.folder, optimizer)
            self.models[model_id] = model
            return Outcome(json={"type": "load_weights", "path": path})

        return self._queue(tenant, model_id, None, build)

    def save_sampler(self, tenant: str, model_id: str, seq_id: int | None, name: str | None) -> str:
        record = self.runs.owned(model_id, tenant)
        session_for = record["session_id"]

        def work() -> Outcome:
            model = self._model(model_id)
            label = name if name is not None else f"sampler-{model.steps:06d}-{uuid.uuid4().hex[:6]}"
            cp = self.runs.new(model_id, "sampler_weights", check_name(label), overwrite=name is None)
            model.save_sampler(cp.folder)
            chat_id = self._publish(cp, record["base"], tenant) if _is_adapter(cp.folder) else None
            out = {"type": "save_weights_for_sampler", "path": cp.path, "model": chat_id}
            if name is None:  # an unnamed save opens a sampler on it at once
                out["sampling_session_id"] = self._open_sampler(tenant, session_for, record["base"], cp.path)
            return Outcome(json=out)

        return self._queue(tenant, model_id, seq_id, work)

    def _publish(self, cp, base: str, tenant: str) -> str:
        """Register a sampler checkpoint as an `ft:` model of `tenant` (the OpenAI chat API's name for it)."""
        chat_id = self._chat_id(cp, base)
        self.catalog.unload(chat_id)  # overwritten: the next request loads the new weights
        self.store.delete_model(chat_id)
        self.store.add_model(chat_id, tenant, base, str(cp.folder), cp.path)
        return chat_id

    # --- sampling ---------------------------------------------------------------------------------

    def _resolve_sampler(self, tenant: str, base: str | None, model_path: str | None) -> tuple:
        """(base, the ft: model id or None for the base, a full fine-tune's folder or None) a sampler reads."""
        if not model_path:
            return self._known(base), None, None
        cp = self.runs.parse(model_path, tenant, "sampler_weights")
        base = self.runs.owned(cp.model_id, tenant)["base"]
        if not cp.folder.is_dir():
            raise LookupError(f"{model_path}: no such checkpoint")
        if not _is_adapter(cp.folder):  # a full fine-tune: served on its own, by this API only
            return base, None, cp.folder
        chat_id = self._chat_id(cp, base)
        if self.store.model(chat_id) is None:
            self._publish(cp, base, tenant)
        return base, chat_id, None

    def _open_sampler(self, tenant: str, session_id: str | None, base: str | None, model_path: str | None) -> str:
        base, chat_id, full = self._resolve_sampler(tenant, base, model_path)
        sampler_id = f"{session_id or 'sampler'}:sample:{uuid.uuid4().hex[:8]}"
        with self.lock:
            self.samplers[sampler_id] = {
                "tenant": tenant,
                "base": base,
                "model_id": chat_id,
                "path": model_path,
                "full": full,
            }
        return sampler_id

    def _full(self, folder: Path):
        """A full fine-tune's weights, loaded once, with a generation engine of their own."""
        from tunesmith.serve.models import load_served

        with self.lock:
            if folder not in self.full_models:
                c = self.catalog
                self.full_models[folder] = load_served(
                    str(folder), [], dtype=c.dtype, kv_budget_mb=c.kv_budget_mb, max_rows=c.max_rows
                )
            return self.full_models[folder]

    def _chat_id(self, cp, base: str) -> str:
        return f"ft:{base}:{cp.name}:{hashlib.sha256(cp.model_id.encode()).hexdigest()[:8]}"

    def create_sampler(self, tenant: str, session_id: str, base: str | None, model_path: str | None) -> str:
        self.own_session(session_id, tenant)
        return self._open_sampler(tenant, session_id, base, model_path)

    def sampler(self, sampler_id: str, tenant: str) -> dict:
        found = self.samplers.get(sampler_id)
        if found is None or found["tenant"] != tenant:
            raise LookupError(f"sampler {sampler_id}: no such sampler (samplers end when the service restarts)")
        return found

    def sampler_info(self, sampler_id: str, tenant: str) -> dict:
        from tunesmith.model.load import tokenizer_dir
        from tunesmith.model.resolve import resolve

        found = self.sampler(sampler_id, tenant)
        # the client loads its tokenizer from base_model: the folder it can load without a hub
        return {
            "sampler_id": sampler_id,
            "base_model": str(tokenizer_dir(resolve(self.bases[found["base"]]))),
            "model_path": found["path"],
        }

    def sample(self, tenant: str, request: dict) -> str:
        if request.get("sampling_session_id"):
            found = self.sampler(request["sampling_session_id"], tenant)
            base, model_id, full = found["base"], found["model_id"], found["full"]
        else:  # a sample without a session names its model itself (nothing is kept for it)
            base, model_id, full = self._resolve_sampler(tenant, request.get("base_model"), request.get("model_path"))
        params = request["params"]
        prompt = request["prompt"]

        def work() -> Outcome:
            served = self._full(full) if full is not None else self.catalog.holder(model_id or base, tenant)
            if served is None:
                raise UserError(f"{model_id or base}: no such model")
            result = sample(served, model_id, prompt, params, self.max_tokens)
            return Outcome(
                json=_sample_json(result),
                proto=wire.sample_response(
                    result["sequences"], result.get("prompt_logprobs"), result.get("topk_prompt")
                ),
            )

        return self._thread(tenant, work)


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def _sample_json(result: dict) -> dict:
    return {
        "type": "sample",
        "sequences": [
            {"tokens": s["tokens"], "logprobs": s["logprobs"], "stop_reason": s["stop_reason"]}
            for s in result["sequences"]
        ],
        "prompt_logprobs": result.get("prompt_logprobs"),
    }


def sample_params(body: dict) -> SampleParams:
    sp = body.get("sampling_params") or {}
    return SampleParams(
        num_samples=int(body.get("num_samples", 1)),
        max_tokens=sp.get("max_tokens"),
        temperature=float(sp.get("temperature", 1.0)),
        top_p=float(sp.get("top_p", 1.0)),
        top_k=int(sp.get("top_k", -1)),
        seed=sp.get("seed"),
        stop=sp.get("stop"),
        prompt_logprobs=bool(body.get("prompt_logprobs")),
        topk_prompt_logprobs=int(body.get("topk_prompt_logprobs") or 0),
        topk_sample_logprobs=int(body.get("topk_sample_logprobs") or 0),
    )


def prompt_tokens(model_input: dict) -> list[int]:
    """The tokens of a ModelInput as JSON ({"chunks": [{"type": "encoded_text", "tokens": [...]}]})."""
    tokens: list[int] = []
    for chunk in (model_input or {}).get("chunks", []):
        if chunk.get("type", "encoded_text") != "encoded_text":
            raise UserError(f"prompt: a {chunk.get('type')} chunk; this server reads text tokens only")
        tokens += [int(t) for t in chunk.get("tokens", [])]
    return tokens
