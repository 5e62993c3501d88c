"""One reply as a stream of text pieces: the request is submitted to the server's generation
engine at once (it decodes with every other request in flight), and this side decodes the token
ids it hands over, cuts the text at a stop sequence, and cancels the row early (a stop sequence,
or a client gone)."""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

from tunesmith.generation.engine import Done, Request
from tunesmith.generation.sampling import RowGrammar, RowSettings
from tunesmith.serve.models import ServedModels


@dataclass
class Params:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    call_grammar: str | None = None  # decode under this tool-call grammar (`eval/constrained.py`)
    logprobs: int | None = None  # None: none; N: each token's log-probability and the N most likely there
    echo: bool = False  # (completions) the prompt's tokens scored too; max_tokens may then be 0
    ignore_eos: bool = False  # go on past the end of turn to max_tokens


@dataclass
class TokenEntry:
    """One token of a reply with its log-probability: `text` is what it adds to the reply (a
    character split over several tokens counts for the last of them), at `offset`."""

    token: int
    text: str
    offset: int
    logprob: float | None
    top: list[tuple[int, float]] | None


@dataclass
class Finished:
    reason: str  # "stop" (end of turn or a stop sequence) | "length" (max_tokens reached)
    completion_tokens: int


class Reply:
    """One choice being generated: submitted when made; iterate for its text pieces, then one
    `Finished`. Raises TooLarge at once when the KV budget cannot hold it."""

    def __init__(self, served: ServedModels, model_id: str, prompt: list[int], params: Params):
        self.tokenizer = served.tokenizer(model_id)
        self.params = params
        grammar = None
        if params.call_grammar is not None:
            from tunesmith.eval.constrained import matcher

            vocab = served.model.config.vocab_size
            grammar = RowGrammar(matcher(self.tokenizer, params.call_grammar, vocab), self.tokenizer.eos_token_id)
        seed = (
            params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 2
        )  # unseeded: fresh
        settings = RowSettings(
            params.temperature if params.top_p > 0 else 0.0, params.top_p, seed=seed, logprobs=params.logprobs
        )
        self.prompt = prompt
        self.entries: list[TokenEntry] = []  # with logprobs: the reply's tokens (not the stop token)
        self._taken = 0
        stop_ids = frozenset() if params.ignore_eos else frozenset({self.tokenizer.eos_token_id})
        self.stream = served.engine.submit(
            Request(
                prompt,
                params.max_tokens,
                model_id,
                settings,
                stop_ids,
                grammar,
                prompt_logprobs=params.echo and params.logprobs is not None,
            )
        )
        weakref.finalize(self, self.stream.cancel)  # dropped unread (a client gone first): its row ends

    def __iter__(self) -> Iterator[str | Finished]:
        tokenizer, params = self.tokenizer, self.params
        eos = tokenizer.eos_token_id
        ids: list[int] = []
        prefix, read = 0, 0  # incremental decoding offsets: text is added only once its bytes are whole
        text, sent = "", 0
        hold = max((len(s) for s in params.stop), default=1) - 1  # a stop sequence may be split across pieces
        reason = None
        try:
            while not isinstance(item := self.stream.get(), Done):
                for choice in item:
                    ids.append(choice.token)
                    new, prefix, read = _decoded(tokenizer, ids, prefix, read)
                    if params.logprobs is not None and choice.token != eos:
                        self.entries.append(TokenEntry(choice.token, new, len(text), choice.logprob, choice.top))
                    text += new
                cut = _first_stop(text, params.stop, max(0, sent - hold))
                if cut >= 0:
                    if cut > sent:
                        yield text[sent:cut]
                    reason, sent = "stop", len(text)
                    self.entries = [e for e in self.entries if e.offset < cut]
                    self.stream.cancel()
                    break
                if len(text) - hold > sent:
                    yield text[sent : len(text) - hold]
                    sent = len(text) - hold
            if reason is None:
                # the end: bytes still incomplete are decoded as they are (as an offline decode would)
                rest = _decoded(tokenizer, ids, prefix, read, final=True)[0]
                if rest and self.entries:
                    self.entries[-1].text += rest
                text += rest
                cut = _first_stop(text, params.stop, max(0, sent - hold))
                if cut >= 0:
                    text, reason = text[:cut], "stop"
                    self.entries = [e for e in self.entries if e.offset < cut]
                if len(text) > sent:
                    yield text[sent:]
                at_limit = len(ids) >= params.max_tokens and (not ids or ids[-1] != eos)
                reason = reason or ("length" if at_limit else "stop")
            yield Finished(reason, len(ids))
        finally:
            self.stream.cancel()  # a client that leaves mid-reply frees its row at the next step

    def take_entries(self) -> list[TokenEntry]:
        """The entries made since the last call (for a streamed chunk)."""
        taken, self._taken = self._taken, len(self.entries)
        return self.entries[taken:]

    def prompt_entries(self) -> list[TokenEntry]:
        """The prompt's tokens scored (echo with logprobs), offsets within the decoded prompt; waits
        for the prompt's prefill."""
        self.stream.prefilled.wait()
        scored = self.stream.prompt_logprobs or [None] * len(self.prompt)
        out, text = [], ""
        prefix = read = 0
        for i, token in enumerate(self.prompt):
            last = i == len(self.prompt) - 1
            new, prefix, read = _decoded(self.tokenizer, self.prompt[: i + 1], prefix, read, final=last)
            choice = scored[i]
            logprob, top = (choice.logprob, choice.top) if choice else (None, None)
            out.append(TokenEntry(token, new, len(text), logprob, top))
            text += new
        return out

    def whole(self) -> tuple[str, Finished]:
        """The whole reply at once."""
        pieces: list[str] = []
        finished: Finished | None = None
        for item in self:
            if isinstance(item, Finished):
                finished = item
            else:
                pieces.append(item)
        assert finished is not None  # a choice always ends with its Finished
        return "".join(pieces), finished


def stream_text(served: ServedModels, model_id: str, prompt: list[int], params: Params) -> Iterator[str | Finished]:
    """Text pieces of one reply as they are made, then one `Finished`."""
    return iter(Reply(served, model_id, prompt, params))


def _decoded(tokenizer, ids: list[int], prefix: int, read: int, final: bool = False) -> tuple[str, int, int]:
    """Text the ids after `read` add, decoded with the context from `prefix` (byte-level tokens
    join into characters); none yet while its last character is incomplete, unless `final`.
    Returns the new text and the offsets for the next call."""
    before = tokenizer.decode(ids[prefix:read], skip_special_tokens=True)
    after = tokenizer.decode(ids[prefix:], skip_special_tokens=True)
    if final or (len(after) > len(before) and not after.endswith("\ufffd")):
        return after[len(before) :], read, len(ids)
    return "", prefix, read


def _first_stop(text: str, stops: list[str], start: int) -> int:
    """Where the earliest stop sequence begins in `text` (searching from `start`), or -1."""
    return min((i for i in (text.find(s, start) for s in stops) if i >= 0), default=-1)


def complete(served: ServedModels, model_id: str, prompt: list[int], params: Params) -> tuple[str, Finished]:
    """The whole reply at once."""
    return Reply(served, model_id, prompt, params).whole()
