"""The Tinker training API of `tunesmith service`, driven by the unmodified `tinker` client against
a live service on the tiny model: the client owns the loop, the service the model.

The client's loop must be the engine's loop: 20 forward_backward + optim_step give the losses
`tunesmith train` gives on the same batches with the same Adam parameters; a saved sampler
answers as the tuned model does in `tunesmith generate` and on the OpenAI chat API; a state saved
before the service is killed goes on exactly after it restarts; tenants see only their own.
The losses themselves are pure functions, checked against values computed by hand.
"""

import json
import math
import signal

import numpy as np
import pytest
import torch
from helpers import cli, write_config

from tunesmith.methods import token_losses

tinker = pytest.importorskip("tinker", reason="the tinker client (pip install -e '.[dev]') is needed")
types = tinker.types

KEY_A, KEY_B = "tml-tenant-a-0123456789", "tml-tenant-b-0123456789"
BASE = "HuggingFaceTB/tiny-llama"  # the tiny model, served under a hub-style id
STEPS, BATCH, LR, RANK = 20, 16, 2e-3, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # LoRA on attention + MLP
ADAM = {"learning_rate": LR, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "grad_clip_norm": 0.0}


# --- the losses, by hand ----------------------------------------------------------------------------


def _grad(fn, logps, inputs, config=None):
    x = torch.tensor(logps, dtype=torch.float64, requires_grad=True)
    loss = fn(x, {k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items()}, config or {})
    loss.backward()
    return float(loss.detach()), x.grad.tolist()


def test_each_loss_and_its_gradient_equal_values_computed_by_hand():
    lp, q, adv = [-1.0, -2.0, -0.5], [-1.2, -1.5, -0.5], [2.0, -1.0, 0.5]
    r = [math.exp(a - b) for a, b in zip(lp, q)]  # 1.2214, 0.6065, 1.0

    loss, grad = _grad(token_losses.cross_entropy, lp, {"weights": [0.0, 1.0, 0.5]})
    assert loss == pytest.approx(2.0 + 0.25) and grad == pytest.approx([0.0, -1.0, -0.5])

    loss, grad = _grad(token_losses.importance_sampling, lp, {"logprobs": q, "advantages": adv})
    assert loss == pytest.approx(-(r[0] * 2.0 - r[1] * 1.0 + r[2] * 0.5))
    assert grad == pytest.approx([-r[0] * 2.0, r[1] * 1.0, -r[2] * 0.5])  # d(-r·A)/dlogp = -r·A

    # PPO (bounds 0.8, 1.2): token 0's ratio 1.22 > 1.2 with A > 0 is clipped (no gradient); token 1's
    # 0.61 < 0.8 with A < 0: min(r·A, 0.8·A) = 0.8·A is clipped too; token 2 (r = 1) is not
    loss, grad = _grad(token_losses.ppo, lp, {"logprobs": q, "advantages": adv})
    assert loss == pytest.approx(-(1.2 * 2.0 + 0.8 * -1.0 + 1.0 * 0.5))
    assert grad == pytest.approx([0.0, 0.0, -0.5])
    loss, grad = _grad(
        token_losses.ppo,
        lp,
        {"logprobs": q, "advantages": adv},
        {"clip_low_threshold": 0.5, "clip_high_threshold": 1.5},
    )
    assert grad == pytest.approx([-r[0] * 2.0, r[1] * 1.0, -0.5])  # wider bounds: nothing clipped

    # CISPO: the clipped ratio is a constant weight on log p
    loss, grad = _grad(token_losses.cispo, lp, {"logprobs": q, "advantages": adv})
    assert loss == pytest.approx(-(1.2 * -1.0 * 2.0 + 0.8 * -2.0 * -1.0 + 1.0 * -0.5 * 0.5))
    assert grad == pytest.approx([-1.2 * 2.0, 0.8 * 1.0, -1.0 * 0.5])

    # DRO: -(logp·A - β/2 (logp - q)²), gradient -(A - β (logp - q))
    loss, grad = _grad(token_losses.dro, lp, {"logprobs": q, "advantages": adv}, {"beta": 0.1})
    assert loss == pytest.approx(-sum(a * x - 0.05 * (x - b) ** 2 for a, x, b in zip(adv, lp, q)))
    assert grad == pytest.approx([-(a - 0.1 * (x - b)) for a, x, b in zip(adv, lp, q)])


def test_a_loss_refuses_inputs_it_lacks_and_config_it_does_not_read():
    from tunesmith.errors import UserError

    with pytest.raises(UserError, match="needs loss_fn_inputs advantages"):
        token_losses.check_loss("ppo", {"target_tokens", "logprobs"}, {})
    with pytest.raises(UserError, match="beta: not read by ppo"):
        token_losses.check_loss("ppo", {"target_tokens", "logprobs", "advantages"}, {"beta": 1.0})
    with pytest.raises(UserError, match="not a loss this server has"):
        token_losses.check_loss("nll", {"target_tokens"}, {})


def test_a_policy_loss_moves_the_model_as_cross_entropy_weighted_by_its_own_token_gradient(tiny_model_dir):
    """On the engine: PPO's gradient on the model equals cross-entropy's with weights = -dPPO/dlogp
    (the identity the client's custom losses rely on), with dPPO/dlogp computed by hand."""
    from tunesmith.methods.client_loss import Datum
    from tunesmith.run.client_loop import ClientLoopModel, ModelSpec

    model = ClientLoopModel(ModelSpec(str(tiny_model_dir), rank=4, train_unembed=False, precision="fp32"))
    tokens = [5, 9, 12, 7, 3, 22, 4]
    targets = np.array(tokens[1:] + [2], dtype=np.int64)
    probe, _ = model.forward_backward(
        [Datum(tokens, {"target_tokens": targets, "weights": np.ones(7, np.float32)})], "cross_entropy", forward=True
    )
    logp = probe[0].astype(np.float64)
    q = logp + np.array([0.3, -0.3, 0.0, 0.1, -0.05, 0.25, -0.4])  # ratios exp(logp - q) both sides of the clip
    adv = np.array([-1.0, 1.0, 0.5, -0.5, 2.0, -1.0, 1.0])  # tokens 0, 1, 5, 6 clipped; 2, 3, 4 not
    ratio = np.exp(logp - q)
    clipped = np.clip(ratio, 0.8, 1.2)
    by_hand = np.where(ratio * adv <= clipped * adv, -ratio * adv, 0.0)  # dPPO/dlogp where the min is unclipped

    def gradients(loss_fn, inputs):
        model.forward_backward([Datum(tokens, {"target_tokens": targets, **inputs})], loss_fn)
        grads = [p.grad.clone() for p in model.params]
        for p in model.params:
            p.grad = None
        return grads

    ppo = gradients("ppo", {"logprobs": q.astype(np.float32), "advantages": adv.astype(np.float32)})
    ce = gradients("cross_entropy", {"weights": (-by_hand).astype(np.float32)})
    assert any(g.abs().sum() > 0 for g in ppo) and (by_hand == 0).sum() == 4
    for a, b in zip(ppo, ce):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)  # float32 rounding of the ratios


def test_a_request_larger_than_one_pass_gives_one_passs_losses_and_gradient(tiny_model_dir, monkeypatch):
    """A forward_backward goes through in passes of bounded tokens (an RL batch of 64 sampled
    replies would otherwise hold its whole batch's logits at once); split or not, the same
    log-probabilities, loss and gradient."""
    import tunesmith.run.client_loop as client_loop
    from tunesmith.methods.client_loss import Datum

    rng = np.random.default_rng(0)
    data = []
    for n in rng.integers(6, 30, size=12):
        tokens = [int(t) for t in rng.integers(3, 200, size=n)]
        data.append(
            Datum(
                tokens,
                {
                    "target_tokens": np.array(tokens[1:] + [2], dtype=np.int64),
                    "logprobs": rng.normal(-3, 0.2, n).astype(np.float32),
                    "advantages": rng.normal(0, 1, n).astype(np.float32),
                },
            )
        )
    model = client_loop.ClientLoopModel(client_loop.ModelSpec(str(tiny_model_dir), rank=4, precision="fp32"))

    def run(budget):
        passes = []
        real = client_loop.split_by_tokens
        monkeypatch.setattr(client_loop, "pass_budget", lambda configured, dev: budget)
        monkeypatch.setattr(client_loop, "split_by_tokens", lambda *a: passes.append(real(*a)) or passes[-1])
        outputs, metrics = model.forward_backward(data, "importance_sampling")
        grads = [p.grad.clone() for p in model.params]
        for p in model.params:
            p.grad = None
        return outputs, metrics["loss:sum"], grads, len(passes[0])

    one, split = run(None), run(64)
    assert one[3] == 1 and split[3] >= 4  # 12 datums of 7-30 tokens, at most 64 padded tokens a pass
    for a, b in zip(one[0], split[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert split[1] == pytest.approx(one[1], rel=1e-5)
    for a, b in zip(one[2], split[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cross_entropy_over_k_candidates_per_position_sums_each_candidates_own_term(tiny_model_dir):
    """Top-K distillation's form: targets (N, K) with weights (N, K) give Σ -w·log p(candidate), each
    log p the one the (N,) form gives for that candidate alone."""
    from tunesmith.methods.client_loss import Datum
    from tunesmith.run.client_loop import ClientLoopModel, ModelSpec

    model = ClientLoopModel(ModelSpec(str(tiny_model_dir), rank=4, precision="fp32"))
    tokens = [5, 9, 12, 7, 3]
    candidates = np.array([[9, 4, 30], [12, 2, 8], [7, 7, 1], [3, 50, 6], [2, 11, 19]], dtype=np.int64)
    weights = np.array(
        [[0.6, 0.3, 0.1], [1.0, 0.0, 0.0], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]], dtype=np.float32
    )
    [both], metrics = model.forward_backward(
        [Datum(tokens, {"target_tokens": candidates, "weights": weights})], "cross_entropy", forward=True
    )
    assert both.shape == (5, 3)
    for k in range(3):
        [alone], _ = model.forward_backward(
            [Datum(tokens, {"target_tokens": candidates[:, k].copy(), "weights": np.ones(5, np.float32)})],
            "cross_entropy",
            forward=True,
        )
        np.testing.assert_allclose(both[:, k], alone, rtol=1e-5)
    assert metrics["loss:sum"] == pytest.approx(float(-(both * weights).sum()), rel=1e-5)


# --- a live service ---------------------------------------------------------------------------------


def start(home, model_dir):
    from test_service import start_service

    keys = home.parent / "keys.txt"
    keys.write_text(f"{KEY_A} team-a\n{KEY_B} team-b\n")
    # served under a hub-style name (`--model ID=REFERENCE`), as clients that know models by those names ask
    url, proc = start_service(home, f"{BASE}={model_dir}", "--api-keys-file", str(keys))
    return url.removesuffix("/v1"), proc


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("tinker") / "home"
    url, proc = start(home, tiny_model_dir)
    state = {"url": url, "proc": proc, "home": home, "base": BASE}
    yield state
    state["proc"].terminate()
    state["proc"].wait(timeout=60)


def client(live, key=KEY_A):
    return tinker.ServiceClient(base_url=live["url"], api_key=key)


@pytest.fixture(scope="module")
def batch(date_data, tiny_model_dir):
    """The first 16 training conversations as tunesmith encodes them for SFT, and as datums whose
    weights average the loss over the batch's trained tokens (what `tunesmith train` minimises)."""
    from tunesmith.data.chat import IGNORE, encode_example
    from tunesmith.data.records import load_examples
    from tunesmith.model.load import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    examples = load_examples(str(date_data["train"]))[:BATCH]
    encoded = [encode_example(tokenizer, e, 256, "all_assistant", True) for e in examples]
    trained = sum(sum(label != IGNORE for label in enc.labels[1:]) for enc in encoded)
    datums = [
        types.Datum(
            model_input=types.ModelInput.from_ints(enc.input_ids[:-1]),
            loss_fn_inputs={
                "target_tokens": np.array(enc.input_ids[1:], dtype=np.int64),
                "weights": np.array([(label != IGNORE) / trained for label in enc.labels[1:]], dtype=np.float32),
            },
        )
        for enc in encoded
    ]
    train_file = date_data["train"].parent / "first16.jsonl"
    train_file.write_text("".join(line + "\n" for line in date_data["train"].read_text().splitlines()[:BATCH]))
    return {"datums": datums, "file": train_file, "tokenizer": tokenizer}


def train_steps(training, datums, n):
    losses = []
    for _ in range(n):
        fb = training.forward_backward(datums, "cross_entropy")
        step = training.optim_step(types.AdamParams(**ADAM))
        losses.append(fb.result().metrics["loss:sum"])
        step.result()
    return losses


@pytest.fixture(scope="module")
def tuned(live, batch):
    service = client(live)
    training = service.create_lora_training_client(base_model=live["base"], rank=RANK, train_unembed=False).result()
    losses = train_steps(training, batch["datums"], STEPS)
    sampler_path = training.save_weights_for_sampler("step20").result().path
    return {"service": service, "training": training, "losses": losses, "sampler": sampler_path}


def test_a_supervised_loop_through_the_client_gives_tunesmith_trains_losses_step_by_step(
    tuned, batch, tiny_model_dir, tmp_path
):
    losses = tuned["losses"]
    assert losses[-1] < 0.7 * losses[0], losses  # it learned (measured: 6.26 -> 3.42)
    config = write_config(
        tmp_path / "run.yaml",
        tiny_model_dir,
        {"train": batch["file"], "val": batch["file"]},
        tmp_path / "runs",
        adapter={"type": "lora", "r": RANK, "alpha": 32.0, "targets": TARGETS},
        data={"train": [{"path": str(batch["file"])}], "max_length": 256},
        train={
            "max_steps": STEPS,
            "batch_size": BATCH,
            "lr": LR,
            "schedule": "constant",
            "warmup": 0,
            "max_grad_norm": None,
            "weight_decay": 0.0,
            "precision": "fp32",
            "log_every": 1,
        },
        eval={"generate_every": 1000},
    )
    done = cli(["train", str(config)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    trained = [r["loss"] for r in records if "loss" in r]
    assert len(trained) == STEPS
    np.testing.assert_allclose(losses, trained, rtol=0, atol=1e-5)


def test_a_saved_sampler_answers_as_the_tuned_model_in_generate_and_on_the_chat_api(tuned, live, batch, tmp_path):
    import openai

    from tunesmith.data.chat import prompt_ids

    sampler = tuned["service"].create_sampling_client(model_path=tuned["sampler"]).result()
    tokenizer = batch["tokenizer"]
    question = "What is the date 3 days after 2024-02-27?"
    prompt = prompt_ids(tokenizer, [{"role": "user", "content": question}], None)  # as `tunesmith generate` builds it
    result = sampler.sample(
        types.ModelInput.from_ints(list(prompt)),
        num_samples=1,
        sampling_params=types.SamplingParams(max_tokens=24, temperature=0.0),
    ).result()
    tokens = result.sequences[0].tokens
    assert len(result.sequences[0].logprobs) == len(tokens)
    # compute_logprobs: the sampler's log-probabilities of a text are the trained model's own
    scored = list(prompt) + tokens
    logprobs = sampler.compute_logprobs(types.ModelInput.from_ints(scored)).result()
    assert len(logprobs) == len(scored) and logprobs[0] is None
    forward = (
        tuned["training"]
        .forward(
            [
                types.Datum(
                    model_input=types.ModelInput.from_ints(scored[:-1]),
                    loss_fn_inputs={
                        "target_tokens": np.array(scored[1:], dtype=np.int64),
                        "weights": np.zeros(len(scored) - 1, np.float32),
                    },
                )
            ],
            "cross_entropy",
        )
        .result()
    )
    np.testing.assert_allclose(logprobs[1:], forward.loss_fn_outputs[0]["logprobs"].data, atol=1e-4)
    np.testing.assert_allclose(result.sequences[0].logprobs, logprobs[len(prompt) :], atol=1e-4)
    reply = tokenizer.decode(tokens, skip_special_tokens=True).strip()

    folder = live["home"] / "tinker" / tuned["sampler"][len("tinker://") :].split("/")[0] / "sampler_weights" / "step20"
    generated = cli(
        ["generate", str(folder), "--prompt", question, "--max-new-tokens", "24", "--precision", "fp32"], tmp_path
    )
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stdout.strip() == reply

    chat = openai.OpenAI(base_url=live["url"] + "/v1", api_key=KEY_A, max_retries=0)
    [model] = [m.id for m in chat.models.list() if m.id.startswith(f"ft:{live['base']}:step20:")]
    answer = chat.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0
    )
    assert answer.choices[0].message.content.strip() == reply
    other = openai.OpenAI(base_url=live["url"] + "/v1", api_key=KEY_B, max_retries=0)
    assert model not in [m.id for m in other.models.list()]  # the sampler is its tenant's model


def test_another_tenant_cannot_see_train_or_load_what_is_not_its_own(tuned, live):
    other = client(live, KEY_B)
    model_id = tuned["training"].model_id
    rest = tinker.RestClient(base_url=live["url"], api_key=KEY_B)
    with pytest.raises(tinker.NotFoundError):
        rest.get_training_run(model_id).result()
    with pytest.raises(Exception, match="no such checkpoint"):
        other.create_sampling_client(model_path=tuned["sampler"]).result().sample(
            types.ModelInput.from_ints([1, 2]), 1, types.SamplingParams(max_tokens=2)
        ).result()
    runs = tinker.RestClient(base_url=live["url"], api_key=KEY_A).list_training_runs().result()
    assert model_id in [r.training_run_id for r in runs.training_runs]
    assert model_id not in [r.training_run_id for r in rest.list_training_runs().result().training_runs]


def test_a_bad_request_fails_its_own_future_and_the_service_keeps_serving(tuned, batch):
    training = tuned["training"]
    bad = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": np.array([2, 3, 4]), "weights": np.ones(3, np.float32)},
    )
    with pytest.raises(Exception, match="needs loss_fn_inputs logprobs, advantages"):
        training.forward_backward([bad], "ppo").result()
    with pytest.raises(Exception, match="vocabulary"):
        training.forward_backward(
            [
                types.Datum(
                    model_input=types.ModelInput.from_ints([1, 10**6]),
                    loss_fn_inputs={"target_tokens": np.array([2, 3]), "weights": np.ones(2, np.float32)},
                )
            ],
            "cross_entropy",
        ).result()
    out = training.forward_backward(batch["datums"][:2], "cross_entropy").result()  # still serving, in order
    assert len(out.loss_fn_outputs) == 2 and math.isfinite(out.metrics["loss:sum"])


def test_a_finished_session_frees_its_models_and_their_saved_states_stay(live, batch):
    import httpx

    datums = batch["datums"][:2]
    training = client(live).create_lora_training_client(base_model=live["base"], rank=RANK).result()
    before = train_steps(training, datums, 1)
    path = training.save_state("kept").result().path
    session_id = training.model_id.split(":")[0]
    other = httpx.post(f"{live['url']}/api/v1/sessions/{session_id}/finish", headers={"X-API-Key": KEY_B}, json={})
    assert other.status_code == 404  # not its session
    done = httpx.post(f"{live['url']}/api/v1/sessions/{session_id}/finish", headers={"X-API-Key": KEY_A}, json={})
    assert done.status_code == 200
    with pytest.raises(Exception, match="no longer in memory"):
        training.forward_backward(datums, "cross_entropy").result()
    again = client(live).create_training_client_from_state(path).result()
    [loss] = train_steps(again, datums, 1)
    assert loss < before[0]  # the saved state: one step further than where the session began


def test_a_state_saved_before_the_service_is_killed_goes_on_exactly_after_a_restart(live, batch, tiny_model_dir):
    datums = batch["datums"]
    service = client(live)
    straight = service.create_lora_training_client(base_model=live["base"], rank=RANK, train_unembed=False).result()
    uninterrupted = train_steps(straight, datums, 5)

    saved = service.create_lora_training_client(base_model=live["base"], rank=RANK, train_unembed=False).result()
    first = train_steps(saved, datums, 3)
    assert first == pytest.approx(uninterrupted[:3], abs=1e-6)
    path = saved.save_state("after-3").result().path

    live["proc"].send_signal(signal.SIGKILL)
    live["proc"].wait(timeout=30)
    live["url"], live["proc"] = start(live["home"], tiny_model_dir)

    resumed = client(live).create_training_client_from_state_with_optimizer(path).result()
    assert train_steps(resumed, datums, 2) == pytest.approx(uninterrupted[3:], abs=1e-6)
    # the weights alone give the same next loss, but not the step after it: Adam's moments count
    weights_only = client(live).create_training_client_from_state(path).result()
    fourth, fifth = train_steps(weights_only, datums, 2)
    assert fourth == pytest.approx(uninterrupted[3], abs=1e-6)
    assert abs(fifth - uninterrupted[4]) > 1e-4
