"""The generation engine (continuous batching, an adapter per row) against transformers'
`generate` run for one request at a time: every family's tiny model, LoRA/IA3/DoRA adapters
mixed in one batch, requests joining mid-batch, a KV budget smaller than the load, cancelled
rows, seeded sampling and log-probabilities. Replies must be the same tokens; these fp32 models
show no rounding flip, so the comparisons are exact."""

import threading
from collections import Counter

import pytest
import torch
from test_families import FAMILIES, WINDOW, build

from tunesmith.generation import row_attention
from tunesmith.generation.engine import Done, GenerationEngine, Request, TooLarge
from tunesmith.generation.sampling import RowSettings

EOS = 2


class Source:
    """A model and its adapters as the engine sees a server's (model ids are PEFT adapter names here)."""

    def __init__(self, model):
        self.model, self.lock = model, threading.Lock()
        self.removed: set[str] = set()

    def adapter_key(self, model_id):
        if model_id in self.removed:
            raise LookupError(model_id)
        return model_id


def alone(model, prompt: list[int], max_tokens: int, adapter: str | None = None) -> list[int]:
    """transformers' greedy generate for this prompt alone, under `adapter` (None: the base)."""
    ids = torch.tensor([prompt])
    kwargs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=EOS,
        pad_token_id=0,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    with torch.no_grad():
        if adapter is None and hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                out = model.generate(**kwargs)
        else:
            if adapter is not None:
                model.set_adapter(adapter)
            out = model.generate(**kwargs)
    return out[0, len(prompt) :].tolist()


def prompts(n: int, seed: int = 1, low: int = 3, high: int = 20) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 96, (int(k),), generator=g).tolist() for k in torch.randint(low, high, (n,), generator=g)]


def ask(prompt: list[int], max_tokens: int, **options) -> Request:
    """A request that ends at EOS, as transformers' generate does."""
    return Request(prompt, max_tokens, stop_ids=frozenset({EOS}), **options)


def drain(engine, limit: int = 2000) -> None:
    """Step until every request has ended (a bounded number of steps: a broken engine fails, not hangs)."""
    for _ in range(limit):
        if not (engine.rows or engine.waiting):
            return
        engine.step()
    raise AssertionError(f"still {len(engine.rows)} rows and {len(engine.waiting)} waiting after {limit} steps")


def run_all(engine, requests: list[Request]) -> list:
    streams = [engine.submit(r) for r in requests]
    drain(engine)
    return streams


def tokens(stream) -> list[int]:
    return [c.token for c in stream]


@pytest.mark.parametrize("decoding", ["keys-gathered", "row-by-row", "switching-midway"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_decodes_in_a_batch_what_it_generates_alone(family, decoding, monkeypatch):
    """Rows of different prompt lengths (several past the sliding window) and different max_tokens
    decode together; each gets transformers' own reply to it alone, whether decoding attends with
    every row's keys gathered into one batch, row by row over its own slots, or switches from the
    one to the other as the longest row grows past `PER_ROW_FROM` keys."""
    model = build(family).eval()
    asked = prompts(6)
    assert max(map(len, asked)) > WINDOW
    threshold = {"keys-gathered": 10**9, "row-by-row": 0, "switching-midway": max(map(len, asked)) + 4}[decoding]
    monkeypatch.setattr(row_attention, "PER_ROW_FROM", threshold)
    used = count_calls(monkeypatch, row_attention, "_decode_together", "_decode_each")
    engine = GenerationEngine(Source(model), 1 << 24, max_rows=8)
    streams = run_all(engine, [ask(p, 12 + i) for i, p in enumerate(asked)])
    assert [tokens(s) for s in streams] == [alone(model, p, 12 + i) for i, p in enumerate(asked)]
    assert engine.arena.used == 0 and not engine.rows  # every row retired, its slots given back
    if family == "gemma2":  # soft-capped scores: the model's own eager attention, row by row
        assert not used
    elif decoding == "switching-midway" and family in ("mistral", "phi3"):  # every layer reads at most WINDOW keys
        assert set(used) == {"_decode_together"}
    else:
        both = {"_decode_together", "_decode_each"}
        assert set(used) == {"keys-gathered": {"_decode_together"}, "row-by-row": {"_decode_each"}}.get(decoding, both)


def count_calls(monkeypatch, module, *names: str) -> Counter:
    """How often each of the module's functions `names` runs from now on (they still run)."""
    used: Counter = Counter()

    def counted(name, real):
        def call(*args, **kwargs):
            used[name] += 1
            return real(*args, **kwargs)

        return call

    for name in names:
        monkeypatch.setattr(module, name, counted(name, getattr(module, name)))
    return used


def adapted(kind: str):
    from peft import IA3Config, LoraConfig, get_peft_model

    def config():
        if kind == "ia3":
            return IA3Config(
                target_modules=["k_proj", "v_proj", "down_proj"],
                feedforward_modules=["down_proj"],
                init_ia3_weights=False,
            )
        return LoraConfig(
            r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, use_dora=kind == "dora"
        )

    torch.manual_seed(1)
    model = get_peft_model(build("llama"), config(), adapter_name="a")
    model.add_adapter("b", config())
    return model.eval()


@pytest.mark.parametrize("kind", ["lora", "ia3", "dora"])
def test_rows_with_different_adapters_get_what_each_adapter_gives_alone(kind):
    model = adapted(kind)
    asked = prompts(9)
    names = [None, "a", "b"] * 3
    engine = GenerationEngine(Source(model), 1 << 24)
    streams = run_all(engine, [ask(p, 10, model_id=m) for p, m in zip(asked, names)])
    expected = [alone(model, p, 10, m) for p, m in zip(asked, names)]
    assert [tokens(s) for s in streams] == expected
    assert len({tuple(e) for e in expected}) == len(expected)  # the adapters do change the replies


def test_a_request_admitted_mid_batch_joins_without_changing_the_others():
    model = adapted("lora")
    asked = prompts(5, seed=2)
    names = ["a", None, "b", "b", "a"]
    engine = GenerationEngine(Source(model), 1 << 24)
    first = [engine.submit(ask(p, 16, model_id=m)) for p, m in zip(asked[:3], names[:3])]
    for _ in range(5):
        engine.step()
    assert all(s.items.qsize() == 6 for s in first)  # so far: the prefill's token, then one per step
    later = [engine.submit(ask(p, 16, model_id=m)) for p, m in zip(asked[3:], names[3:])]
    drain(engine)
    got = [tokens(s) for s in first + later]
    assert got == [alone(model, p, 16, m) for p, m in zip(asked, names)]


def test_the_kv_budget_is_never_exceeded_and_requests_wait_in_order():
    """A budget for about two rows at a time: eight requests all finish with their own replies,
    the slots held never pass the budget (measured after every step), and rows start in the order
    the requests came; one that could never fit is refused at once."""
    model = build("llama").eval()
    asked = prompts(8, seed=3, low=8, high=16)
    probe = GenerationEngine(Source(model), 1)
    budget_tokens = 2 * (16 + 12) + 5
    engine = GenerationEngine(Source(model), budget_tokens * probe.token_bytes, max_rows=8)
    assert engine.budget_tokens == budget_tokens
    streams = [engine.submit(ask(p, 12)) for p in asked]
    held, started = [], []
    for _ in range(500):
        if not (engine.rows or engine.waiting):
            break
        engine.step()
        held.append(engine.arena.used)
        started += [i for i, s in enumerate(streams) if s.first_token_s is not None and i not in started]
    assert not (engine.rows or engine.waiting)
    assert max(held) <= budget_tokens and engine.arena.peak_tokens <= budget_tokens
    assert max(held) > budget_tokens // 2  # it did hold more than one row at a time
    assert started == sorted(started)  # first come, first served
    assert [tokens(s) for s in streams] == [alone(model, p, 12) for p in asked]
    with pytest.raises(TooLarge, match=f"budget holds {budget_tokens}"):
        engine.submit(ask(list(range(3, 40)), budget_tokens))


def test_a_cancelled_row_ends_and_its_slots_serve_the_next_request():
    model = build("llama").eval()
    asked = prompts(3, seed=4, low=10, high=12)
    probe = GenerationEngine(Source(model), 1)
    engine = GenerationEngine(Source(model), 2 * (12 + 30) * probe.token_bytes)  # two rows at a time
    a, b, c = (engine.submit(ask(p, 30)) for p in asked)
    for _ in range(4):
        engine.step()
    assert c.first_token_s is None  # c waits for room
    a.cancel()
    drain(engine)
    got_a = tokens(a)
    assert a.done == Done("cancelled", len(got_a)) and got_a == alone(model, asked[0], 30)[: len(got_a)]
    assert tokens(b) == alone(model, asked[1], 30) and tokens(c) == alone(model, asked[2], 30)


def test_a_row_whose_model_is_removed_ends_with_that_error_and_the_others_go_on():
    model = adapted("lora")
    source = Source(model)
    engine = GenerationEngine(source, 1 << 24)
    asked = prompts(2, seed=5)
    gone, kept = engine.submit(ask(asked[0], 12, model_id="a")), engine.submit(ask(asked[1], 12, model_id="b"))
    engine.step()
    source.removed.add("a")
    drain(engine)
    with pytest.raises(LookupError):
        list(gone)
    assert tokens(kept) == alone(model, asked[1], 12, "b")


def test_seeded_sampling_draws_the_same_tokens_alone_and_under_load():
    model = adapted("lora")
    asked = prompts(6, seed=6)
    settings = RowSettings(temperature=0.9, top_p=0.8, seed=42)
    engine = GenerationEngine(Source(model), 1 << 24)
    solo = tokens(run_all(engine, [ask(asked[0], 16, model_id="a", settings=settings)])[0])
    crowd = run_all(
        engine,
        [ask(asked[0], 16, model_id="a", settings=settings)]
        + [
            ask(p, 16, model_id=m, settings=RowSettings(temperature=1.0))
            for p, m in zip(asked[1:], ["b", None, "a", "b", None])
        ],
    )
    assert tokens(crowd[0]) == solo
    other = tokens(run_all(engine, [ask(asked[0], 16, model_id="a", settings=RowSettings(0.9, 0.8, seed=43))])[0])
    assert other != solo  # the seed is what makes them equal


def test_rows_that_share_a_prompt_compute_it_once_and_each_draws_what_it_draws_alone():
    """A group of samples of one prompt (as GRPO draws them): the prompt is computed once for the
    group and copied into each row's cache; each row, with its own seed, gets the tokens it gets
    alone, and the same prompt under another adapter is computed on its own."""
    model = adapted("lora")
    asked = prompts(2, seed=8)
    group = [(asked[0], "a", seed) for seed in (1, 2, 3)] + [(asked[0], "b", 4), (asked[1], "a", 5), (asked[1], "a", 6)]
    engine = GenerationEngine(Source(model), 1 << 24)
    each = [
        tokens(run_all(engine, [ask(p, 12, model_id=m, settings=RowSettings(1.0, seed=s))])[0]) for p, m, s in group
    ]
    engine = GenerationEngine(Source(model), 1 << 24)
    together = run_all(engine, [ask(p, 12, model_id=m, settings=RowSettings(1.0, seed=s)) for p, m, s in group])
    assert [tokens(s) for s in together] == each
    assert len({tuple(t) for t in each[:3]}) > 1  # the seeds differ: the copies are separate rows
    assert engine.counters.prompt_tokens == sum(len(p) for p, _, _ in group)
    assert engine.counters.prefill_tokens == len(asked[0]) * 2 + len(asked[1])  # (prompt 0 with a, with b; prompt 1)


def test_log_probabilities_per_row_are_the_model_own():
    """Each chosen token's log-probability, the row's top ones and the prompt's, against one
    forward pass of the whole sequence (prompt + reply) through the same adapter."""
    model = adapted("lora")
    asked = prompts(3, seed=7)
    names = ["a", None, "b"]
    engine = GenerationEngine(Source(model), 1 << 24)
    streams = run_all(
        engine,
        [ask(p, 8, model_id=m, settings=RowSettings(logprobs=3), prompt_logprobs=True) for p, m in zip(asked, names)],
    )
    for prompt, name, stream in zip(asked, names, streams):
        choices = list(stream)
        sequence = prompt + [c.token for c in choices]
        with torch.no_grad():
            if name is None:
                with model.disable_adapter():
                    logits = model(input_ids=torch.tensor([sequence])).logits[0]
            else:
                model.set_adapter(name)
                logits = model(input_ids=torch.tensor([sequence])).logits[0]
        expected = torch.log_softmax(logits.float(), dim=-1)
        for i, c in enumerate(choices):
            row = expected[len(prompt) - 1 + i]
            assert c.logprob == pytest.approx(float(row[c.token]), abs=1e-5)
            assert [t for t, _ in c.top] == row.topk(3).indices.tolist()
            assert c.top[0][0] == c.token  # greedy: the chosen token is the most likely
        assert stream.prompt_logprobs[0] is None
        want = [float(expected[i - 1, prompt[i]]) for i in range(1, len(prompt))]
        assert [c.logprob for c in stream.prompt_logprobs[1:]] == pytest.approx(want, abs=1e-5)
        assert [c.token for c in stream.prompt_logprobs[1:]] == prompt[1:]
        tops = expected[: len(prompt) - 1].topk(3).indices.tolist()
        assert [[t for t, _ in c.top] for c in stream.prompt_logprobs[1:]] == tops
    scored = run_all(engine, [ask(asked[0], 0, model_id="a", prompt_logprobs=True)])[0]  # a prompt scored, nothing made
    assert list(scored) == [] and scored.done.reason == "length"
    assert [c.token for c in scored.prompt_logprobs[1:]] == asked[0][1:]


class FailingGrammar:
    """A row's token choice that fails on its third token (as a broken grammar would)."""

    def __init__(self):
        self.calls = 0

    def mask(self, logits):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("grammar failed")
        return logits

    def consume(self, token):
        pass


def test_a_row_whose_token_choice_fails_ends_with_that_error_and_the_others_go_on():
    model = build("llama").eval()
    asked = prompts(3, seed=8)
    engine = GenerationEngine(Source(model), 1 << 24)
    streams = run_all(engine, [ask(asked[0], 10), ask(asked[1], 10, grammar=FailingGrammar()), ask(asked[2], 10)])
    with pytest.raises(RuntimeError, match="grammar failed"):
        list(streams[1])
    assert tokens(streams[0]) == alone(model, asked[0], 10) and tokens(streams[2]) == alone(model, asked[2], 10)
    assert engine.arena.used == 0


def test_under_autocast_the_head_cast_once_samples_what_a_cast_per_pass_samples(monkeypatch):
    """Sampling while a bf16 run trains: the fp32 head (tied to the embeddings) cast to bf16 once
    for the whole generation gives the tokens autocast's cast at every pass gives, and the tie is
    back afterwards."""
    from contextlib import nullcontext

    import tunesmith.generation.batch as batch

    model = build("llama").eval()
    tied = model.get_output_embeddings().weight = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is tied
    head_dtypes = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, a: head_dtypes.append(m.weight.dtype))
    asked = prompts(6, seed=5)

    def sample():
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            settings = RowSettings(temperature=1.0, seed=7)
            return batch.generate_tokens(model, asked, 12, settings, frozenset({EOS}), rows=4)

    once = sample()
    assert set(head_dtypes) == {torch.bfloat16} and model.get_output_embeddings().weight is tied
    monkeypatch.setattr(batch, "head_cast_once", lambda m: nullcontext())
    head_dtypes.clear()
    assert sample() == once and set(head_dtypes) == {torch.float32}
