"""`tunesmith serve` against the official openai client, unmodified, over a live server: a tiny base
with two LoRA adapters, each answer checked against the same model generating offline."""

import json
import re
import shutil
import signal
import threading
import time

import pytest
import torch
from helpers import cli_env, cli_here, start_server

openai = pytest.importorskip("openai")

KEY = "test-key-123"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir):
    """Two LoRA adapters with different random weights (not zero: each changes the replies)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        model = get_peft_model(
            base,
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
        )
        model.save_pretrained(root / name)
    return {"a": root / "a", "b": root / "b"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, adapters):
    yield from running_server(
        tmp_path_factory.mktemp("serve"),
        tiny_model_dir,
        "--adapter",
        f"a={adapters['a']}",
        "--adapter",
        f"b={adapters['b']}",
        "--max-tokens",
        "64",
    )


def running_server(tmp, model_dir, *options):
    """`tunesmith serve` on a free port with the test key; yields its URL and process, stops it after."""
    line, proc = start_server(
        ["serve", str(model_dir), "--port", "0", "--api-key-env", "TS_SERVE_KEY", "--precision", "fp32", *options],
        tmp,
        {**cli_env(tmp), "TS_SERVE_KEY": KEY},
    )
    url = line.split(" at ")[1].split()[0]
    yield {"url": url, "base": model_dir.name, "proc": proc}
    proc.terminate()
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # stops promptly (uvicorn re-raises the signal it caught)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"], api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def offline(tiny_model_dir, adapters):
    """Each served name's model loaded on its own, the way `tunesmith generate` loads it."""
    from tunesmith.model.load import load_for_inference

    base = load_for_inference(str(tiny_model_dir))
    return {tiny_model_dir.name: base, **{n: load_for_inference(str(p), merge=False) for n, p in adapters.items()}}


CHAT = [{"role": "user", "content": "Text: Tom flew to Paris on 3 May 2021. Date:"}]


def offline_reply(model_and_tok, messages=CHAT, max_new_tokens=12) -> str:
    from tunesmith.eval.generate import Sampling, generate_batch

    model, tok = model_and_tok
    return generate_batch(model, tok, [messages], Sampling(max_new_tokens=max_new_tokens))[0]


def test_models_lists_the_base_and_each_adapter_and_a_key_is_required(server, client):
    assert server["url"].startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
    assert [m.id for m in client.models.list()] == [server["base"], "a", "b"]
    assert client.models.retrieve("a").owned_by == "tunesmith"
    stranger = openai.OpenAI(base_url=server["url"], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        stranger.models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"


def test_chat_answers_as_the_base_or_the_adapter_named(server, client, offline):
    replies = {}
    for name in (server["base"], "a", "b"):
        r = client.chat.completions.create(model=name, messages=CHAT, temperature=0, max_tokens=12)
        replies[name] = r.choices[0].message.content
        assert r.model == name and r.choices[0].message.role == "assistant"
        assert replies[name].strip() == offline_reply(offline[name])  # the same tokens as offline
        assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 10
    assert len(set(replies.values())) == 3  # each adapter really answers differently


def test_streaming_sends_the_same_reply_in_pieces(client):
    whole = client.chat.completions.create(model="a", messages=CHAT, temperature=0, max_tokens=40)
    chunks = list(
        client.chat.completions.create(
            model="a", messages=CHAT, temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True}
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.id == chunks[0].id for c in chunks)


def test_seed_n_and_stop(client):
    kwargs = dict(model="b", messages=CHAT, temperature=1.0, top_p=0.9, max_tokens=12, seed=3, n=2)
    first, again = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1] and texts == [c.message.content for c in again.choices]
    greedy = (
        client.chat.completions.create(model="b", messages=CHAT, temperature=0, max_tokens=24)
        .choices[0]
        .message.content
    )
    stop = greedy[len(greedy) // 2 : len(greedy) // 2 + 3]
    cut = client.chat.completions.create(model="b", messages=CHAT, temperature=0, max_tokens=24, stop=[stop]).choices[0]
    assert cut.message.content == greedy[: greedy.index(stop)] and cut.finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="b", messages=CHAT, temperature=0, max_tokens=24, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut.message.content


def test_completions_continue_plain_text(client, server, offline):
    prompt = "Tom flew to Paris on"
    r = client.completions.create(model="a", prompt=prompt, max_tokens=8, temperature=0)
    model, tok = offline["a"]
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    assert r.choices[0].text == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert r.object == "text_completion" and r.usage.prompt_tokens == ids.shape[1]


def offline_logprobs(model_and_tok, ids: list[int]) -> torch.Tensor:
    """log_softmax of the offline model's logits over `ids` (row i: the distribution after ids[:i+1])."""
    model, _ = model_and_tok
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


def test_chat_log_probabilities_are_the_model_own_whole_and_streamed(client, offline):
    from tunesmith.data.chat import prompt_ids

    r = client.chat.completions.create(
        model="a", messages=CHAT, temperature=0, max_tokens=10, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    model, tok = offline["a"]
    prompt = prompt_ids(tok, CHAT)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        reply = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )[0, len(prompt) :].tolist()
    reply = [t for t in reply if t != tok.eos_token_id]
    assert "".join(c.token for c in content) == tok.decode(reply, skip_special_tokens=True)
    assert len(content) == len(reply)
    expected = offline_logprobs(offline["a"], prompt + reply)
    for i, c in enumerate(content):
        row = expected[len(prompt) - 1 + i]
        assert c.logprob == pytest.approx(float(row[reply[i]]), abs=1e-4)
        assert c.logprob == pytest.approx(float(row.max()), abs=1e-4)  # greedy: the most likely token's
        assert [t.token for t in c.top_logprobs] == [tok.decode([t]) for t in row.topk(3).indices.tolist()]
        assert bytes(c.bytes) == c.token.encode()
    chunks = list(
        client.chat.completions.create(
            model="a", messages=CHAT, temperature=0, max_tokens=10, logprobs=True, top_logprobs=3, stream=True
        )
    )
    streamed = [t for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(model="a", messages=CHAT, max_tokens=4, top_logprobs=2)


def test_completions_score_a_text_with_echo_and_logprobs(client, offline):
    """A teacher's view of a text: max_tokens 0, echo and logprobs give each of its tokens'
    log-probability under the model (the first has none), as the legacy completions API does."""
    text = "Tom flew to Paris on 3 May"
    r = client.completions.create(model="b", prompt=text, max_tokens=0, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    model, tok = offline["b"]
    ids = tok(text)["input_ids"]
    expected = offline_logprobs(offline["b"], ids)
    assert r.choices[0].text == text and "".join(lp.tokens) == tok.decode(ids, skip_special_tokens=True)
    assert lp.token_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(
        [float(expected[i - 1, ids[i]]) for i in range(1, len(ids))], abs=1e-4
    )
    assert lp.top_logprobs[0] is None and lp.text_offset[0] == 0
    for i, top in enumerate(lp.top_logprobs[1:], start=1):  # (keyed by text: two tokens may read the same)
        assert 1 <= len(top) <= 2 and max(top.values()) == pytest.approx(float(expected[i - 1].max()), abs=1e-4)
    more = client.completions.create(model="b", prompt=text, max_tokens=4, echo=True, logprobs=0, temperature=0)
    assert more.choices[0].text.startswith(text) and len(more.choices[0].logprobs.tokens) == len(ids) + 4
    assert more.choices[0].logprobs.text_offset[len(ids)] == len(text)
    with pytest.raises(openai.BadRequestError, match="max_tokens 0 only scores a prompt"):
        client.completions.create(model="b", prompt=text, max_tokens=0)
    # the same tokens given as ids (how a teacher scores a student's own tokens): the same scores
    by_ids = client.completions.create(model="b", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    assert by_ids.choices[0].logprobs.token_logprobs == pytest.approx(lp.token_logprobs, abs=1e-6)
    two = client.completions.create(model="b", prompt=[ids, ids[:3]], max_tokens=0, echo=True, logprobs=0)
    assert [len(c.logprobs.token_logprobs) for c in two.choices] == [len(ids), 3]
    with pytest.raises(openai.BadRequestError, match="token ids must be in"):
        client.completions.create(model="b", prompt=[1, 10**7], max_tokens=0, echo=True, logprobs=0)


def test_many_clients_at_once_each_get_the_reply_they_get_alone(server, client):
    """Twelve requests in flight together (base and both adapters, max_tokens 6 to 40, half of
    them streamed, one stream closed after its third piece): each reply is the one the same
    request gets alone, and the closed one's row is retired (the engine ends idle)."""
    import urllib.request

    names = [server["base"], "a", "b"] * 4
    limits = [6 + 3 * i for i in range(12)]

    def ask(name: str, limit: int, stream: bool) -> str:
        if not stream:
            return (
                client.chat.completions.create(model=name, messages=CHAT, temperature=0, max_tokens=limit)
                .choices[0]
                .message.content
            )
        return "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model=name, messages=CHAT, temperature=0, max_tokens=limit, stream=True
            )
            if c.choices
        )

    expected = [ask(n, k, False) for n, k in zip(names, limits)]
    results: dict[int, str] = {}
    closed: list[int] = []

    def go(i: int) -> None:
        if i == 11:  # a client that leaves mid-reply
            with client.chat.completions.create(
                model=names[i], messages=CHAT, temperature=0, max_tokens=64, stream=True
            ) as chunks:
                for n, _ in enumerate(chunks):
                    if n == 3:
                        break
            closed.append(i)
            return
        results[i] = ask(names[i], limits[i], stream=i % 2 == 1)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in range(11)] == expected[:11] and closed == [11]
    metrics = server["url"].removesuffix("/v1") + "/metrics"
    deadline = time.time() + 30
    while True:
        with urllib.request.urlopen(metrics, timeout=10) as response:
            text = response.read().decode()
        if 'tunesmith_active_rows{model="' in text and re.search(r"tunesmith_active_rows\{[^}]*\} 0\.0", text):
            break
        assert time.time() < deadline, text
        time.sleep(0.2)
    assert re.search(r"tunesmith_kv_cache_used_tokens\{[^}]*\} 0\.0", text)
    peak = float(re.search(r"tunesmith_kv_cache_peak_tokens\{[^}]*\} ([0-9.]+)", text).group(1))
    assert peak > 2 * 40  # several rows held cache at once
    assert re.search(r'tunesmith_time_to_first_token_seconds_count\{model="[^"]+"\} ([0-9.]+)', text)


def raw_post(url: str, body: bytes) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def announce_large_body(url: str, size: int) -> tuple[int, dict]:
    """POST headers announcing `size` bytes and only the first 64 KiB of them, then read the answer.
    The server refuses by Content-Length before reading the body and closes the connection; a
    client still writing the whole body could meet that close as a broken pipe instead of the 413."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", parts.path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    conn.send(b'{"model": "a", "messages": [{"role": "user", "content": "' + b"x" * (64 << 10))
    response = conn.getresponse()
    status, body = response.status, json.loads(response.read())
    conn.close()
    return status, body


def test_bad_requests_get_openai_errors(server, client, adapters):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="c", messages=CHAT)
    assert e.value.body["code"] == "model_not_found" and "a, b" in e.value.body["message"]
    for path in (str(adapters["a"]), "/etc/passwd", "../a"):  # a name is looked up, never opened as a path
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=path, messages=CHAT, max_tokens=2)
    for bad, param in (
        (dict(temperature=5), "temperature"),
        (dict(max_tokens=65), "max_tokens"),
        (dict(extra_body={"tools": []}), "tools"),
        (dict(n=9), "n"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="a", messages=CHAT, **bad)
        assert e.value.status_code == 400 and e.value.body["param"] == param, bad
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="a", messages=[])
    status, body = announce_large_body(f"{server['url']}/chat/completions", 2 << 20)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body = raw_post(f"{server['url']}/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert client.models.list().data  # still serving


def test_concurrent_requests_are_queued_and_each_gets_its_own_answer(server, client):
    import urllib.request

    def reply(name: str) -> str:
        return (
            client.chat.completions.create(model=name, messages=CHAT, temperature=0, max_tokens=48)
            .choices[0]
            .message.content
        )

    names = ["a", "b"] * 3
    expected = [reply(n) for n in names]
    results: dict[int, str] = {}

    def ask(i: int, name: str) -> None:
        results[i] = reply(name)

    threads = [threading.Thread(target=ask, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    in_flight = []  # what the server counts as running or waiting, seen while the six are out
    health = server["url"].removesuffix("/v1") + "/health"
    while any(t.is_alive() for t in threads):
        with urllib.request.urlopen(health, timeout=10) as response:
            in_flight.append(json.loads(response.read())["requests"])
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in range(len(names))] == expected
    assert max(in_flight) >= 2, in_flight  # they overlapped at the server: one answered while others waited


def test_a_full_queue_answers_429_and_then_serves_again(tiny_model_dir):
    from fastapi.testclient import TestClient

    from tunesmith.serve.app import build_app
    from tunesmith.serve.models import load_served

    served = load_served(str(tiny_model_dir), [])
    http = TestClient(build_app(served, max_queue=2))
    body = {"model": tiny_model_dir.name, "messages": CHAT, "max_tokens": 4, "temperature": 0}
    statuses: list[int] = []
    with served.lock:  # the model is busy: two requests wait their turn, a third is turned away
        waiting = [
            threading.Thread(target=lambda: statuses.append(http.post("/v1/chat/completions", json=body).status_code))
            for _ in range(2)
        ]
        for t in waiting:
            t.start()
        deadline = time.time() + 30
        while http.app.state.queue.count < 2 and time.time() < deadline:
            time.sleep(0.01)
        refused = http.post("/v1/chat/completions", json=body)
    for t in waiting:
        t.join(timeout=60)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
    assert statuses == [200, 200] and http.post("/v1/chat/completions", json=body).status_code == 200


def test_a_request_larger_than_the_kv_budget_gets_400_and_others_are_served(tiny_model_dir):
    """A budget of 80 tokens of KV cache (in MB, from the tiny model's bytes per token): a request
    whose prompt plus max_tokens needs more is refused naming the budget; one that fits is answered."""
    from fastapi.testclient import TestClient

    from tunesmith.generation.kv_arena import bytes_per_token
    from tunesmith.serve.app import build_app
    from tunesmith.serve.models import load_served

    probe = load_served(str(tiny_model_dir), [])
    budget_mb = 80 * bytes_per_token(probe.model.config, torch.float32) / 2**20
    served = load_served(str(tiny_model_dir), [], kv_budget_mb=budget_mb)
    http = TestClient(build_app(served))
    body = {"model": tiny_model_dir.name, "messages": CHAT, "temperature": 0}
    refused = http.post("/v1/chat/completions", json={**body, "max_tokens": 79})
    error = refused.json()["error"]
    assert refused.status_code == 400 and error["code"] == "kv_budget_exceeded" and error["param"] == "max_tokens"
    assert "budget holds 80" in error["message"]
    answered = http.post("/v1/chat/completions", json={**body, "max_tokens": 4})
    assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] <= 4
    assert http.app.state.queue.count == 0  # the refused request left the queue


def test_serve_refuses_what_it_cannot_serve(tmp_path, tiny_model_dir, adapters):
    from tunesmith.errors import UserError
    from tunesmith.serve.models import load_served, parse_adapter_option

    with pytest.raises(UserError, match="NAME=PATH"):
        parse_adapter_option("just-a-path")
    with pytest.raises(UserError, match="used twice"):
        load_served(str(tiny_model_dir), [("a", str(adapters["a"])), ("a", str(adapters["b"]))])
    with pytest.raises(UserError, match="not an adapter"):
        load_served(str(tiny_model_dir), [("x", str(tiny_model_dir))])
    cfg = json.loads((adapters["a"] / "adapter_config.json").read_text())
    shutil.copytree(tiny_model_dir, tmp_path / "other-base")
    shutil.copytree(adapters["a"], tmp_path / "other")
    (tmp_path / "other" / "adapter_config.json").write_text(
        json.dumps({**cfg, "base_model_name_or_path": str(tmp_path / "other-base")})
    )
    with pytest.raises(UserError, match="not on the served base"):
        load_served(str(tiny_model_dir), [("x", str(tmp_path / "other"))])
    result = cli_here(["serve", str(tiny_model_dir), "--api-key-env", "TS_NOT_SET"], tmp_path)
    assert result.returncode == 2 and "TS_NOT_SET" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_racing_the_removal_of_its_model_gets_not_found(tiny_model_dir, adapters, stream):
    from fastapi.testclient import TestClient

    from tunesmith.serve.app import build_app
    from tunesmith.serve.models import load_served

    served = load_served(str(tiny_model_dir), [("a", str(adapters["a"])), ("b", str(adapters["b"]))])
    http = TestClient(build_app(served), raise_server_exceptions=False)
    body = {"model": "a", "messages": CHAT, "max_tokens": 4, "temperature": 0, "stream": stream}
    answers = []
    with served.lock:  # busy: the request for "a" is admitted and waits its turn ...
        waiting = threading.Thread(target=lambda: answers.append(http.post("/v1/chat/completions", json=body)))
        waiting.start()
        deadline = time.time() + 30
        while http.app.state.queue.count < 1 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        served.remove_adapter("a")  # ... while "a" is deleted
    waiting.join(timeout=60)
    [answer] = answers
    if stream:  # the status line went out before the removal: the error is the stream's event
        assert answer.status_code == 200 and '"code": "model_not_found"' in answer.text.replace('":"', '": "')
    else:
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    b = http.post("/v1/chat/completions", json={**body, "model": "b", "stream": False})
    assert b.status_code == 200  # and the server goes on serving
