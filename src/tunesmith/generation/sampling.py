"""Each row's next token by its own settings, and its log-probabilities.

Greedy rows take the highest logit (the first, on a tie, as transformers' greedy search does).
Sampled rows apply temperature, top-k and top-p as transformers' warpers do, in that order, and
draw from the row's own generator: a seeded row draws the same tokens whatever else shares its
batch; an unseeded one's seed is drawn from torch's global generator when the row starts (so a
training run that seeds torch samples the same replies again, and resumes exactly). A row under a
tool-call grammar may take only the tokens llguidance allows (and only EOS
once the call is complete). Log-probabilities are of the model's own distribution (the raw
logits, before temperature, top-p or a grammar), as OpenAI's API and vLLM report them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowSettings:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: and the k most likely


@dataclass
class Choice:
    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None  # the most likely tokens and their log-probabilities


class RowGrammar:
    """A tool-call grammar for one row (llguidance): which tokens may come next."""

    def __init__(self, matcher, eos: int):
        self.matcher, self.eos = matcher, eos

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        import llguidance.torch as llt

        if self.matcher.is_stopped():  # the call is complete: only the end
            out = torch.full_like(logits, float("-inf"))
            out[self.eos] = 0.0
            return out
        bitmask = llt.allocate_token_bitmask(1, logits.shape[-1])
        llt.fill_next_token_bitmask(self.matcher, bitmask, 0)
        allowed = unpack_bitmask(bitmask, logits.shape[-1])[0].to(logits.device)
        return logits.masked_fill(~allowed, float("-inf"))

    def consume(self, token: int) -> None:
        if not self.matcher.is_stopped():
            self.matcher.consume_token(token)


class RowSampler:
    def __init__(self, settings: RowSettings, grammar: RowGrammar | None = None):
        self.settings, self.grammar = settings, grammar
        self.generator = None
        if settings.temperature > 0:  # unseeded: a seed drawn from torch's generator (a seeded run repeats)
            seed = settings.seed if settings.seed is not None else int(torch.randint(0, 2**62, (1,)))
            self.generator = torch.Generator().manual_seed(seed)

    @property
    def plain_greedy(self) -> bool:
        """Greedy, free and without log-probabilities: its token is the argmax alone (the engine
        takes those of many rows in one call)."""
        return self.settings.temperature <= 0 and self.grammar is None and self.settings.logprobs is None

    def choose(self, logits: torch.Tensor) -> Choice:
        """The next token from one row's logits [vocab]."""
        raw = logits
        scores = self.grammar.mask(logits) if self.grammar is not None else logits
        s = self.settings
        if s.temperature <= 0:
            token = int(torch.argmax(scores))
        else:
            scores = warped(scores.float(), s.temperature, s.top_k, s.top_p)
            token = drawn(torch.softmax(scores, dim=-1).cpu(), self.generator)
        if self.grammar is not None:
            self.grammar.consume(token)
        if s.logprobs is None:
            return Choice(token)
        logprobs = torch.log_softmax(raw.float(), dim=-1)
        top = None
        if s.logprobs > 0:
            values, indices = torch.topk(logprobs, s.logprobs)
            top = [(int(i), float(v)) for i, v in zip(indices, values)]
        return Choice(token, float(logprobs[token]), top)


def drawn(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from `probs` [vocab] by inverse transform sampling: one uniform from the row's
    generator against the cumulative sum (in fp64). torch.multinomial, for one sample, draws an
    exponential variate for every vocabulary entry: about a millisecond per token at 49k entries
    on a CPU, ten times this, and at 16 rows a seventh of a decode step. A token of probability 0
    is never drawn (the first entry whose cumulative sum exceeds the uniform is taken)."""
    cdf = probs.double().cumsum(0)
    total = float(cdf[-1])
    if not total > 0:  # NaN scores, or every token ruled out: no distribution to draw from
        raise ValueError(f"no token can be drawn: the probabilities sum to {total}")
    x = torch.rand((), dtype=torch.float64, generator=generator) * total
    token = int(torch.searchsorted(cdf, x, right=True))
    if token == cdf.numel():  # the uniform rounded up to the total: the last possible token
        token = int(torch.nonzero(probs)[-1])
    return token


def warped(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p, as transformers' logits warpers compute them."""
    scores = scores / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[-1:] = False  # always keep the most likely
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    return scores


def unpack_bitmask(bitmask: torch.Tensor, n_vocab: int) -> torch.Tensor:
    """llguidance's int32 words (bit i of word w: token 32w + i allowed) -> a bool mask [rows, vocab]."""
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :n_vocab].bool()
