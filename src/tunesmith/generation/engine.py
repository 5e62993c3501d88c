"""Continuous batching: requests join a running batch between decode steps.

Each step, under the model's lock: rows whose reader has gone are retired; waiting requests are
admitted in the order they came while the KV arena has a range for their prompt plus
`max_tokens` (the first that does not fit holds the rest back, so none is starved) and up to
`max_rows` are active; each newcomer's prompt is prefilled (one forward pass of it alone, giving
its first token); then every active row decodes one token in one forward pass, each with its
own adapter, position and cache; a row ends on a stop token, at `max_tokens`, when cancelled, or
when its model is removed, and its cache range is free for the next step's admissions.

A reader gets a `Stream`: the chosen tokens as they are made (with log-probabilities when asked),
then `Done(reason)`, or the exception that ended the row. `submit` + a background thread serves
a server; `run` drives the same steps in the calling thread for a batch job.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tunesmith.generation import row_adapters
from tunesmith.generation.kv_arena import KVArena, Span, bytes_per_token
from tunesmith.generation.row_attention import RowsPass, attention_kind, rows_attention
from tunesmith.generation.sampling import Choice, RowGrammar, RowSampler, RowSettings

log = logging.getLogger("tunesmith.generation")
PREFILL_TOKENS = 4096  # tokens (rows x the longest prompt) in one prefill pass: bounds its activations


class ModelSource(Protocol):
    """What the engine generates with: the model (a base, or a PeftModel holding adapters), the
    lock that guards it, and the PEFT adapter name a model id stands for (None: the base; raises
    LookupError once it is gone)."""

    model: torch.nn.Module
    lock: threading.Lock

    def adapter_key(self, model_id: str | None) -> str | None: ...


class TooLarge(ValueError):
    """A request whose prompt plus max_tokens cannot fit the KV budget even alone."""


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    model_id: str | None = None  # the base (None) or a model id the source knows
    settings: RowSettings = field(default_factory=RowSettings)
    stop_ids: frozenset[int] = frozenset()  # tokens that end the reply (kept as its last token)
    grammar: RowGrammar | None = None
    prompt_logprobs: bool = False  # also the log-probabilities of each prompt token after the first
    # max_tokens 0 (with prompt_logprobs): the prompt is scored and nothing generated


@dataclass
class Done:
    reason: str  # "stop" (a stop token) | "length" (max_tokens) | "cancelled"
    tokens: int  # tokens generated


class Stream:
    """One request's results: `get()` returns lists of `Choice` as tokens are made, then `Done`;
    raises the exception that ended the row. `cancel()` retires it at the next step."""

    def __init__(self, request: Request):
        self.request = request
        self.items: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.prefilled = threading.Event()  # set once the prompt is in the cache (or the request ended)
        self.prompt_logprobs: list[Choice | None] | None = None  # with prompt_logprobs, once prefilled
        self.submitted = time.perf_counter()
        self.first_token_s: float | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def get(self, timeout: float | None = None):
        item = self.items.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self):
        """Every Choice, one at a time, until the end (returns; `done` says how it ended)."""
        while True:
            item = self.get()
            if isinstance(item, Done):
                self.done = item
                return
            yield from item


@dataclass
class _Row:
    stream: Stream
    span: Span
    sampler: RowSampler
    filled: int = 0  # tokens in the cache
    pending: int | None = None  # the last chosen token, not yet in the cache
    generated: int = 0
    adapter: str | None = None


FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds
RECENT_S = 10.0  # the window of `tokens_per_second`


@dataclass
class Counters:
    """What /metrics reports: totals since start (time to first token as a histogram), and the
    generated tokens per second over the last RECENT_S seconds."""

    requests: int = 0
    prompt_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens computed (rows sharing a prompt compute it once)
    generated_tokens: int = 0
    steps: int = 0
    busy_s: float = 0.0
    first_token_s_sum: float = 0.0
    first_token_count: int = 0
    first_token_buckets: list[int] = field(default_factory=lambda: [0] * len(FIRST_TOKEN_BUCKETS))
    _recent: deque = field(default_factory=deque)  # (time, tokens) per step

    def first_token(self, seconds: float) -> None:
        self.first_token_s_sum += seconds
        self.first_token_count += 1
        for i, bound in enumerate(FIRST_TOKEN_BUCKETS):
            if seconds <= bound:
                self.first_token_buckets[i] += 1

    def made(self, tokens: int) -> None:
        self.generated_tokens += tokens
        now = time.monotonic()
        self._recent.append((now, tokens))
        while self._recent and self._recent[0][0] < now - RECENT_S:
            self._recent.popleft()

    @property
    def tokens_per_second(self) -> float:
        now = time.monotonic()
        return sum(n for t, n in list(self._recent) if t >= now - RECENT_S) / RECENT_S


class GenerationEngine:
    def __init__(
        self,
        source: ModelSource,
        kv_budget_bytes: int,
        max_rows: int = 32,
        dtype: torch.dtype | None = None,
        per_row_adapters: bool = True,
    ):
        """`per_row_adapters` False: the model generates as it is (its active adapter on every
        row, whatever model id a request names), as evaluation and RL sampling want it."""
        model = source.model
        self.source, self.max_rows, self.per_row_adapters = source, max_rows, per_row_adapters
        param = next(model.parameters())
        self.dtype = dtype or param.dtype
        self.token_bytes = bytes_per_token(model.config, self.dtype)
        self.arena = KVArena(max(1, kv_budget_bytes // self.token_bytes), self.dtype, param.device)
        self.sdpa = attention_kind(model) == "sdpa"
        self.waiting: deque[Stream] = deque()
        self.rows: list[_Row] = []
        self.counters = Counters()
        self.wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def budget_tokens(self) -> int:
        return self.arena.tokens

    # --- requests -------------------------------------------------------------------------------
    def submit(self, request: Request) -> Stream:
        if request.max_tokens < 0 or (request.max_tokens == 0 and not request.prompt_logprobs):
            raise ValueError("max_tokens must be at least 1 (0 only to score a prompt)")
        need = len(request.prompt) + request.max_tokens
        if need > self.arena.tokens:
            raise TooLarge(
                f"the prompt ({len(request.prompt)} tokens) plus max_tokens ({request.max_tokens}) need "
                f"{need} tokens of KV cache; this server's budget holds {self.arena.tokens}"
            )
        if not request.prompt:
            raise ValueError("an empty prompt")
        stream = Stream(request)
        with self.wake:
            self.waiting.append(stream)
            self.counters.requests += 1
            self.wake.notify()
        return stream

    def run(self, requests: list[Request], on_done: Callable[[int], None] | None = None) -> list[Stream]:
        """Generate every request in the calling thread (no server); their streams hold the results."""
        streams = [self.submit(r) for r in requests]
        pending = set(range(len(streams)))
        while pending:
            self.step()
            for i in [i for i in pending if streams[i].items.qsize() and _ended(streams[i])]:
                pending.discard(i)
                if on_done is not None:
                    on_done(i)
        return streams

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        return len(self.rows)

    # --- the background thread (servers) --------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self.wake:
            self._stopping = True
            self.wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not self._stopping and not self.waiting and not self.rows:
                    self.wake.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception:  # a failure is each row's to report (step does); the engine keeps running
                log.exception("generation step failed")

    # --- one step -------------------------------------------------------------------------------
    def step(self) -> None:
        started = time.perf_counter()
        with self.source.lock:
            model = self.source.model
            self._drop_cancelled()
            self._prefill(model, self._admit())
            if self.rows:
                self._decode(model, [r for r in self.rows if r.pending is not None])
        self.counters.busy_s += time.perf_counter() - started

    def _drop_cancelled(self) -> None:
        with self.wake:
            kept = deque(s for s in self.waiting if not s.cancelled.is_set())
            for s in self.waiting:
                if s.cancelled.is_set():
                    s.items.put(Done("cancelled", 0))
                    s.prefilled.set()
            self.waiting = kept
        for row in [r for r in self.rows if r.stream.cancelled.is_set()]:
            self._retire(row, Done("cancelled", row.generated))

    def _admit(self) -> list[_Row]:
        admitted = []
        with self.wake:
            while self.waiting and len(self.rows) < self.max_rows:
                stream = self.waiting[0]
                request = stream.request
                span = self.arena.allocate(len(request.prompt) + request.max_tokens)
                if span is None:
                    break  # first come, first served: the rest wait behind it
                self.waiting.popleft()
                row = _Row(stream, span, RowSampler(request.settings, request.grammar))
                self.rows.append(row)
                admitted.append(row)
        return admitted

    def _adapter(self, row: _Row) -> str | None:
        return self.source.adapter_key(row.stream.request.model_id)

    def _forward(
        self,
        model,
        ids: list[list[int]],
        positions: list[list[int]],
        rows: list[_Row],
        keep: int,
        lengths: list[int] | None = None,
    ):
        adapters = [row.adapter for row in rows]
        device = self.arena.device
        per_row = row_adapters.per_row(model, adapters) if self.per_row_adapters else nullcontext()
        with torch.no_grad(), rows_attention(model), per_row:
            out = model(
                input_ids=torch.tensor(ids, device=device),
                position_ids=torch.tensor(positions, device=device),
                use_cache=False,
                logits_to_keep=keep,
                kv_rows=RowsPass(self.arena, [r.span for r in rows], [r.filled for r in rows], self.sdpa, lengths),
            )
        return out.logits

    def _prefill(self, model, rows: list[_Row]) -> None:
        """Each newcomer's prompt into its cache and its first token: prompts together in one
        pass, left-padded to the longest (up to PREFILL_TOKENS at a time); a prompt whose
        log-probabilities are asked alone (every position's logits)."""
        ready = []
        for row in rows:
            try:
                row.adapter = self._adapter(row)
                ready.append(row)
            except Exception as e:
                self._retire(row, e)
        batches = [[r] for r in ready if r.stream.request.prompt_logprobs]
        batch: list[_Row] = []
        for row in sorted(
            (r for r in ready if not r.stream.request.prompt_logprobs), key=lambda r: len(r.stream.request.prompt)
        ):  # by length: little padding
            if batch and len(row.stream.request.prompt) * (len(batch) + 1) > PREFILL_TOKENS:
                batches.append(batch)
                batch = []
            batch.append(row)
        if batch:
            batches.append(batch)
        for batch in batches:
            self._prefill_batch(model, batch)

    def _prefill_batch(self, model, rows: list[_Row]) -> None:
        scored = rows[0].stream.request.prompt_logprobs
        # rows with the same prompt and adapter (a group of samples, as GRPO draws) share one
        # computation of it: the first row's cache is copied to the others, its logits serve all
        first: dict[tuple, int] = {}
        computed: list[Any] = []
        source: list[int] = []
        for row in rows:
            key = (tuple(row.stream.request.prompt), row.adapter)
            if scored or key not in first:
                first[key] = len(computed)
                computed.append(row)
            source.append(first[key])
        prompts = [r.stream.request.prompt for r in computed]
        width = max(len(p) for p in prompts)
        ids = [[0] * (width - len(p)) + p for p in prompts]
        positions = [[0] * (width - len(p)) + list(range(len(p))) for p in prompts]
        try:
            logits = self._forward(
                model,
                ids,
                positions,
                computed,
                0 if scored else 1,  # every position, or the last
                lengths=[len(p) for p in prompts] if len(computed) > 1 else None,
            )
        except Exception as e:
            for row in rows:
                self._retire(row, e)
            return
        for row, i in zip(rows, source):
            if row is not computed[i]:  # before any row is retired (and its slots given back)
                self.arena.copy(computed[i].span, row.span, len(row.stream.request.prompt))
        self.counters.prefill_tokens += sum(len(p) for p in prompts)
        for row, i in zip(rows, source):
            request = row.stream.request
            row.filled = len(request.prompt)
            self.counters.prompt_tokens += row.filled
            if scored:
                top = request.settings.logprobs or 0
                row.stream.prompt_logprobs = _prompt_logprobs(logits[i, :-1], request.prompt, top)
            row.stream.prefilled.set()
            if request.max_tokens == 0:  # the prompt scored, nothing generated
                self._retire(row, Done("length", 0))
                continue
            self._choose(row, logits[i, -1])

    def _decode(self, model, rows: list[_Row]) -> None:
        if not rows:
            return
        ready = []
        for row in rows:
            try:
                row.adapter = self._adapter(row)  # removed since the last step: this row ends
                ready.append(row)
            except Exception as e:
                self._retire(row, e)
        if not ready:
            return
        try:
            pending = [r.pending for r in ready]
            assert all(t is not None for t in pending)  # a decoding row has chosen its next token
            logits = self._forward(
                model, [[t] for t in pending if t is not None], [[r.filled] for r in ready], ready, 1
            )
        except Exception as e:
            for row in ready:
                self._retire(row, e)
            return
        self.counters.steps += 1
        last = logits[:, -1]
        plain = [i for i, row in enumerate(ready) if row.sampler.plain_greedy]
        # one argmax for all of them (in fp32: twice as fast as bf16's on a CPU, and the same token)
        greedy = dict(zip(plain, torch.argmax(last[plain].float(), dim=-1).tolist())) if plain else {}
        for i, row in enumerate(ready):
            row.filled += 1
            if i in greedy:
                self._chose(row, Choice(greedy[i]))
            else:
                self._choose(row, last[i])

    def _choose(self, row: _Row, logits: torch.Tensor) -> None:
        """The row's next token from its logits; a failure (a grammar's, say) ends this row only."""
        try:
            choice = row.sampler.choose(logits)
        except Exception as e:
            self._retire(row, e)
            return
        self._chose(row, choice)

    def _chose(self, row: _Row, choice: Choice) -> None:
        stream, request = row.stream, row.stream.request
        row.generated += 1
        row.pending = choice.token
        self.counters.made(1)
        if stream.first_token_s is None:
            stream.first_token_s = time.perf_counter() - stream.submitted
            self.counters.first_token(stream.first_token_s)
        stream.items.put([choice])
        if choice.token in request.stop_ids:
            self._retire(row, Done("stop", row.generated))
        elif row.generated >= request.max_tokens:
            self._retire(row, Done("length", row.generated))

    def _retire(self, row: _Row, end: Done | BaseException) -> None:
        if row in self.rows:
            self.rows.remove(row)
            self.arena.release(row.span)
        row.stream.items.put(end)
        row.stream.prefilled.set()


def _prompt_logprobs(logits: torch.Tensor, prompt: list[int], top: int) -> list[Choice | None]:
    """Each prompt token after the first as a Choice: its log-probability given the tokens before
    it and, when `top` > 0, the `top` most likely tokens there (the first token has none)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    after = torch.tensor(prompt[1:], device=logprobs.device)
    chosen = logprobs.gather(1, after[:, None])[:, 0].tolist()
    tops = None
    if top > 0:
        values, indices = torch.topk(logprobs, top, dim=-1)
        tops = [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]
    return [None, *(Choice(t, lp, tops[i] if tops else None) for i, (t, lp) in enumerate(zip(prompt[1:], chosen)))]


def _ended(stream: Stream) -> bool:
    """Whether the stream's last item is its end (peeked without taking anything)."""
    with stream.items.mutex:
        return bool(stream.items.queue) and isinstance(stream.items.queue[-1], (Done, BaseException))
