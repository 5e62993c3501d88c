"""One reply as a stream of text pieces: `model.generate` runs in a worker thread under the
server's lock and hands over token ids as it makes them; this side decodes them, cuts the text at
a stop sequence, and tells the worker to stop early (a stop sequence, or a client gone)."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator

import torch

from tunesmith.eval.generate import Sampling
from tunesmith.serve.models import ServedModels


@dataclass
class Params:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    call_grammar: str | None = None  # decode under this tool-call grammar (`eval/constrained.py`)


@dataclass
class Finished:
    reason: str  # "stop" (end of turn or a stop sequence) | "length" (max_tokens reached)
    completion_tokens: int


class _Handover:
    """A transformers streamer: generated ids go into a queue; `cancel` stops generation."""

    def __init__(self, cancel: threading.Event):
        self.ids: queue.Queue = queue.Queue()
        self.cancel = cancel
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands the prompt over first
            self.prompt_seen = True
            return
        self.ids.put(value.view(-1).tolist())

    def end(self) -> None:
        self.ids.put(None)

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:  # a StoppingCriteria
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


def _run(served: ServedModels, model_id: str, prompt: list[int], params: Params, handover: _Handover) -> None:
    from transformers import StoppingCriteriaList

    from tunesmith.eval.generate import generate_ids

    try:
        with served.lock:
            if handover.cancel.is_set():  # the client left while this waited its turn
                handover.end()
                return
            tokenizer = served.tokenizer(model_id)
            sampling = Sampling(params.max_tokens, params.temperature if params.top_p > 0 else 0.0, params.top_p)
            with served.selected(model_id) as model, torch.no_grad():
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                ids = torch.tensor([prompt], device=next(model.parameters()).device)
                extra = {}
                if params.call_grammar is not None:
                    from transformers import LogitsProcessorList

                    from tunesmith.eval.constrained import GrammarLogits, matcher

                    extra["logits_processor"] = LogitsProcessorList(
                        [GrammarLogits([matcher(tokenizer, params.call_grammar, model.config.vocab_size)], tokenizer.eos_token_id)])
                generate_ids(model, ids, torch.ones_like(ids), streamer=handover,
                             stopping_criteria=StoppingCriteriaList([handover]), **sampling.kwargs(tokenizer), **extra)
    except BaseException as e:  # handed to the reader, which raises it in the request's thread
        handover.ids.put(e)
        handover.ids.put(None)


def stream_text(served: ServedModels, model_id: str, prompt: list[int], params: Params) -> Iterator[str | Finished]:
    """Text pieces of one reply as they are made, then one `Finished`."""
    tokenizer = served.tokenizer(model_id)
    eos = tokenizer.eos_token_id
    cancel = threading.Event()
    handover = _Handover(cancel)
    worker = threading.Thread(target=_run, args=(served, model_id, prompt, params, handover), daemon=True)
    worker.start()
    ids: list[int] = []
    prefix, read = 0, 0  # incremental decoding offsets: text is added only once its bytes are whole
    text, sent = "", 0
    hold = max((len(s) for s in params.stop), default=1) - 1  # a stop sequence may be split across pieces
    reason = None
    try:
        while (item := handover.ids.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            ids.extend(item)
            new, prefix, read = _decoded(tokenizer, ids, prefix, read)
            text += new
            cut = _first_stop(text, params.stop, max(0, sent - hold))
            if cut >= 0:
                if cut > sent:
                    yield text[sent:cut]
                reason, sent = "stop", len(text)
                cancel.set()
                break
            if len(text) - hold > sent:
                yield text[sent:len(text) - hold]
                sent = len(text) - hold
        if reason is None:
            # the end: bytes still incomplete are decoded as they are (as an offline decode would)
            text += _decoded(tokenizer, ids, prefix, read, final=True)[0]
            cut = _first_stop(text, params.stop, max(0, sent - hold))
            if cut >= 0:
                text, reason = text[:cut], "stop"
            if len(text) > sent:
                yield text[sent:]
            reason = reason or ("length" if len(ids) >= params.max_tokens and ids[-1] != eos else "stop")
        yield Finished(reason, len(ids))
    finally:
        cancel.set()  # a client that leaves mid-reply frees the model at the next token


def _decoded(tokenizer, ids: list[int], prefix: int, read: int, final: bool = False) -> tuple[str, int, int]:
    """Text the ids after `read` add, decoded with the context from `prefix` (byte-level tokens
    join into characters); none yet while its last character is incomplete, unless `final`.
    Returns the new text and the offsets for the next call."""
    before = tokenizer.decode(ids[prefix:read], skip_special_tokens=True)
    after = tokenizer.decode(ids[prefix:], skip_special_tokens=True)
    if final or (len(after) > len(before) and not after.endswith("\ufffd")):
        return after[len(before):], read, len(ids)
    return "", prefix, read


def _first_stop(text: str, stops: list[str], start: int) -> int:
    """Where the earliest stop sequence begins in `text` (searching from `start`), or -1."""
    return min((i for i in (text.find(s, start) for s in stops) if i >= 0), default=-1)


def complete(served: ServedModels, model_id: str, prompt: list[int], params: Params) -> tuple[str, Finished]:
    """The whole reply at once."""
    pieces, finished = [], None
    for item in stream_text(served, model_id, prompt, params):
        if isinstance(item, Finished):
            finished = item
        else:
            pieces.append(item)
    return "".join(pieces), finished
