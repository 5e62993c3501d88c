"""Distillation: losses against hand-computed values; chunked computation equals the whole."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tunesmith.methods.distill_losses import chunked, divergence, topk_forward_kl

TEACHER = [0.5, 0.3, 0.2]
STUDENT = [0.2, 0.5, 0.3]


def logits(probs):
    return torch.tensor([probs]).log()


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_forward_and_reverse_kl_match_hand_computed_values():
    fwd = divergence(logits(STUDENT), logits(TEACHER), "forward_kl")
    rev = divergence(logits(STUDENT), logits(TEACHER), "reverse_kl")
    # 0.5 ln(0.5/0.2) + 0.3 ln(0.3/0.5) + 0.2 ln(0.2/0.3); 0.2 ln(0.2/0.5) + 0.5 ln(0.5/0.3) + 0.3 ln(0.3/0.2)
    assert fwd.item() == pytest.approx(0.223805, abs=1e-6)
    assert rev.item() == pytest.approx(0.193794, abs=1e-6)
    assert (fwd.item(), rev.item()) == pytest.approx((kl(TEACHER, STUDENT), kl(STUDENT, TEACHER)))


@pytest.mark.parametrize("beta, expected", [(0.0, 0.223805), (0.5, 0.050875), (1.0, 0.193794)])
def test_generalized_jsd_matches_hand_computed_values(beta, expected):
    # beta 0.5: M = [0.35, 0.4, 0.25]; 0.5 KL(T||M) + 0.5 KL(S||M) = 0.5 (0.047404 + 0.054346)
    got = divergence(logits(STUDENT), logits(TEACHER), "jsd", beta=beta)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    if 0 < beta < 1:
        m = [beta * t + (1 - beta) * s for t, s in zip(TEACHER, STUDENT)]
        assert got.item() == pytest.approx(beta * kl(TEACHER, m) + (1 - beta) * kl(STUDENT, m))


def test_temperature_softens_both_sides_and_scales_by_t_squared():
    teacher, student = torch.tensor([[2.0, 0.0, 0.0]]), torch.zeros(1, 3)
    # T = 2: teacher softmax([1, 0, 0]) = [e, 1, 1] / (e + 2), student uniform; times T^2 = 4
    p = [math.e / (math.e + 2), 1 / (math.e + 2), 1 / (math.e + 2)]
    expected = 4 * kl(p, [1 / 3] * 3)
    assert expected == pytest.approx(0.493138, abs=1e-6)
    assert divergence(student, teacher, "forward_kl", temperature=2.0).item() == pytest.approx(expected, abs=1e-6)


def test_topk_forward_kl_renormalises_the_teacher_over_its_k():
    student = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    teacher_logps = torch.log(torch.tensor([[0.6, 0.2]]))  # top-2 of a teacher whose tail holds 0.2
    indices = torch.tensor([[3, 0]])
    s = torch.log_softmax(student, -1)[0]
    t = [0.75, 0.25]  # 0.6 and 0.2 renormalised
    expected = t[0] * (math.log(t[0]) - s[3].item()) + t[1] * (math.log(t[1]) - s[0].item())
    assert topk_forward_kl(student, indices, teacher_logps).item() == pytest.approx(expected, abs=1e-6)


def test_chunked_loss_and_gradient_equal_the_whole():
    torch.manual_seed(0)
    rows = torch.randn(10, 8, requires_grad=True)
    head = torch.nn.Linear(8, 50)
    teacher = torch.randn(10, 50)

    def fn(r, t):
        return divergence(head(r), t, "jsd", beta=0.3, temperature=1.5).sum()

    whole = fn(rows, teacher)
    (g_whole,) = torch.autograd.grad(whole, rows)
    parts = chunked(fn, rows, teacher, chunk=3)
    (g_parts,) = torch.autograd.grad(parts, rows)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(g_parts, g_whole)


# --- students and distillation on tiny models ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, tokenizer, date_data):
    """A 4-layer tiny Llama, fully fine-tuned on the date data so it has something to teach."""
    from helpers import tiny_shape, write_config
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.config import load_config
    from tunesmith.run import train

    torch.manual_seed(1)
    config = LlamaConfig(
        **tiny_shape(
            tokenizer, num_hidden_layers=4, max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.1
        )
    )
    tmp = tmp_path_factory.mktemp("teacher")
    LlamaForCausalLM(config).save_pretrained(tmp / "base")
    tokenizer.save_pretrained(tmp / "base")
    cfg = write_config(
        tmp / "t.yaml",
        tmp / "base",
        date_data,
        tmp / "runs",
        name="teacher",
        adapter={"type": "none"},
        train={"max_steps": 60, "lr": 3e-3, "log_every": 20},
    )
    train(load_config(cfg), quiet=True)
    return tmp / "runs" / "teacher"


def test_student_keeps_the_chosen_layers_with_their_weights(tmp_path, tiny_teacher):
    from transformers import AutoModelForCausalLM

    from tunesmith.model.student import create_student, kept_layers

    assert kept_layers(30, 10, "uniform") == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert kept_layers(4, 2, "first") == [0, 1] and kept_layers(4, 2, "last") == [2, 3]
    info = create_student(str(tiny_teacher), 2, tmp_path / "student", "uniform")
    assert info["layers"] == [0, 3] and info["teacher_layers"] == 4
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher / "final").eval()
    teacher.model.layers = torch.nn.ModuleList([teacher.model.layers[0], teacher.model.layers[3]])
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids).logits, teacher(input_ids=ids, use_cache=False).logits)
    # the KV cache works with the renumbered layers: cached greedy decoding equals uncached
    with torch.no_grad():
        cached = student.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
        uncached = ids
        for _ in range(6):
            nxt = student(input_ids=uncached, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            uncached = torch.cat([uncached, nxt], 1)
    assert cached.tolist() == uncached.tolist()


def test_student_create_errors(tmp_path, tiny_teacher):
    from helpers import cli_here

    result = cli_here(["student", "create", str(tiny_teacher), "--layers", "9", "--out", str(tmp_path / "s")], tmp_path)
    assert result.returncode == 2 and "--layers 9: the teacher has 4 decoder layers" in result.stderr
    assert not (tmp_path / "s").exists()


def distill_run(tmp_path, student, teacher, data, name="kd", eval_test=False, **distill):
    from helpers import read_jsonl, write_config

    from tunesmith.config import load_config
    from tunesmith.run import train

    evaluation = {
        "every": 30,
        **({"test": str(data["test"]), "max_new_tokens": 8, "latency_samples": 0} if eval_test else {}),
    }
    cfg = write_config(
        tmp_path / f"{name}.yaml",
        student,
        data,
        tmp_path / "runs",
        name=name,
        method="distill",
        adapter={"type": "none"},
        train={"max_steps": 30, "lr": 3e-3, "log_every": 5},
        eval=evaluation,
        forgetting={"probe_limit": 6},
        distill={"teacher": str(teacher), **distill},
    )
    summary = train(load_config(cfg), quiet=True)
    return read_jsonl(tmp_path / "runs" / name / "metrics.jsonl"), summary


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_distillation_moves_the_student_towards_the_teacher(tmp_path, tiny_teacher, date_data, loss):
    from tunesmith.model.student import create_student

    create_student(str(tiny_teacher), 2, tmp_path / "student")
    records, _ = distill_run(tmp_path, tmp_path / "student", tiny_teacher, date_data, loss=loss, temperature=2.0)
    assert records[-1]["kd"] < 0.5 * records[0]["kd"], (records[0], records[-1])
    assert records[-1]["val_kd"] < records[0]["kd"]


def test_topk_cache_matches_the_live_teacher_and_is_reused(tmp_path, tiny_teacher, date_data, capsys):
    from tunesmith.model.student import create_student

    create_student(str(tiny_teacher), 2, tmp_path / "student")
    live, _ = distill_run(tmp_path, tmp_path / "student", tiny_teacher, date_data, name="live")
    # k = the whole tiny vocabulary: the cache holds the teacher exactly, so losses agree
    full, _ = distill_run(tmp_path, tmp_path / "student", tiny_teacher, date_data, name="cached", teacher_topk=400)
    assert full[0]["kd"] == pytest.approx(live[0]["kd"], rel=1e-4)
    small, _ = distill_run(tmp_path, tmp_path / "student", tiny_teacher, date_data, name="top8", teacher_topk=8)
    assert small[-1]["kd"] < 0.5 * small[0]["kd"]
    capsys.readouterr()
    again, _ = distill_run(tmp_path, tmp_path / "student", tiny_teacher, date_data, name="top8-again", teacher_topk=8)
    assert "teacher top-8: one pass" not in capsys.readouterr().err  # read back from the cache
    assert again[0]["kd"] == pytest.approx(small[0]["kd"], rel=1e-6)


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path, tiny_model_dir, date_data):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tunesmith.errors import UserError

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        ["other words entirely"] * 10,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    other = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")
    other.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(other),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match="its tokenizer differs from the student's"):
        distill_run(tmp_path, tiny_model_dir, tmp_path / "other", date_data)
    assert not (tmp_path / "runs" / "kd").exists()


def test_distillation_run_reports_the_student_against_its_teacher(tmp_path, tiny_teacher, date_data):
    import json

    from tunesmith.model.student import create_student

    create_student(str(tiny_teacher), 1, tmp_path / "student", "first")
    _, summary = distill_run(tmp_path, tmp_path / "student", tiny_teacher, date_data, eval_test=True, kd_ratio=0.5)
    run = tmp_path / "runs" / "kd"
    result = json.loads((run / "eval" / "distill.json").read_text())
    s, t = result["student"], result["teacher"]
    assert s["parameters"] < t["parameters"] and result["ratios"]["parameters"] == pytest.approx(
        s["parameters"] / t["parameters"]
    )
    assert s["weights_mib"] == pytest.approx(s["parameters"] * 4 / 2**20)  # tied embeddings counted once
    assert s["tokens_per_s"] > 0 and t["tokens_per_s"] > 0
    assert set(s["task"]) >= {"exact_match", "token_f1"} and "mean" in s["general_qa"]
    assert summary["distill"] == result["ratios"]
    assert (run / "plots" / "distill.png").stat().st_size > 0
    md = (run / "report.md").read_text()
    assert (
        "## Distilled student vs its teacher" in md
        and f"| parameters | {t['parameters']:,} | {s['parameters']:,} |" in md
    )


# --- on-policy distillation (distill.on_policy) ----------------------------------------------------


def test_reverse_kl_gradient_matches_a_hand_computation_on_three_tokens():
    """d KL(s ‖ t) / dz_j = s_j (log s_j − log t_j − KL(s ‖ t)), s = softmax(z): what an on-policy
    step follows at each sampled position."""
    z = torch.tensor([[0.3, -0.2, 1.1]], requires_grad=True)
    divergence(z, logits(TEACHER), "reverse_kl").sum().backward()
    e = [math.exp(v) for v in (0.3, -0.2, 1.1)]
    s = [v / sum(e) for v in e]
    rev = kl(s, TEACHER)
    by_hand = [s_j * (math.log(s_j) - math.log(t_j) - rev) for s_j, t_j in zip(s, TEACHER)]
    assert z.grad[0].tolist() == pytest.approx(by_hand, abs=1e-7)


def on_policy_run(tmp_path, student, teacher, data, name, on_record=None, resume=False, lr=3e-3, **distill):
    from helpers import read_jsonl, write_config

    from tunesmith.config import load_config
    from tunesmith.run import train

    cfg = write_config(
        tmp_path / f"{name}.yaml",
        student,
        data,
        tmp_path / "runs",
        name=name,
        method="distill",
        adapter={"type": "none"},
        train={"max_steps": 8, "batch_size": 4, "lr": lr, "log_every": 1},
        output={"save_every": 4, "keep": 1},
        distill={"teacher": str(teacher), "max_new_tokens": 6, **distill},
    )
    train(load_config(cfg), quiet=True, on_record=on_record, resume=resume)
    return read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")


def test_a_student_identical_to_its_teacher_has_zero_on_policy_loss_and_gradient(tmp_path, tiny_teacher, date_data):
    # lr ~0 keeps the student the teacher (Adam would turn float noise in a zero gradient into full steps)
    records = [
        r
        for r in on_policy_run(
            tmp_path, tiny_teacher, tiny_teacher, date_data, "same", loss="reverse_kl", on_policy=1.0, lr=1e-12
        )
        if "kd" in r
    ]
    assert len(records) == 8 and all(r["on_policy"] == 1.0 for r in records)
    assert max(abs(r["kd"]) for r in records) < 1e-6 and max(r["grad_norm"] for r in records) < 1e-5


def test_on_policy_batches_move_the_student_and_lambda_zero_is_todays_distillation(tmp_path, tiny_teacher, date_data):
    from tunesmith.model.student import create_student

    create_student(str(tiny_teacher), 2, tmp_path / "student")
    today = on_policy_run(tmp_path, tmp_path / "student", tiny_teacher, date_data, "today")
    zero = on_policy_run(tmp_path, tmp_path / "student", tiny_teacher, date_data, "zero", on_policy=0.0)
    assert [(r["step"], r["loss"]) for r in zero] == [(r["step"], r["loss"]) for r in today]
    assert not any("on_policy" in r for r in zero)
    half = [
        r
        for r in on_policy_run(tmp_path, tmp_path / "student", tiny_teacher, date_data, "half", on_policy=0.5)
        if "kd" in r
    ]
    chosen = [r["on_policy"] for r in half if "on_policy" in r]
    assert 0 < len(chosen) < len(half)  # some batches sampled by the student, some the data's
    full = [
        r
        for r in on_policy_run(
            tmp_path, tmp_path / "student", tiny_teacher, date_data, "full", on_policy=1.0, loss="reverse_kl"
        )
        if "kd" in r
    ]
    assert full[-1]["kd"] < full[0]["kd"], [r["kd"] for r in full]


def test_an_on_policy_run_resumed_mid_way_gives_the_uninterrupted_losses(tmp_path, tiny_teacher, date_data):
    from tunesmith.model.student import create_student

    create_student(str(tiny_teacher), 2, tmp_path / "student")
    straight = on_policy_run(tmp_path, tmp_path / "student", tiny_teacher, date_data, "straight", on_policy=0.5)

    def interrupt(step, record):
        if step == 6:
            raise KeyboardInterrupt  # after step 6 was logged; the checkpoint is step 4's

    with pytest.raises(KeyboardInterrupt):
        on_policy_run(
            tmp_path, tmp_path / "student", tiny_teacher, date_data, "resumed", on_record=interrupt, on_policy=0.5
        )
    resumed = on_policy_run(
        tmp_path, tmp_path / "student", tiny_teacher, date_data, "resumed", resume=True, on_policy=0.5
    )
    losses = [(r["step"], r["loss"], r.get("on_policy")) for r in straight if "kd" in r]
    assert [(r["step"], pytest.approx(r["loss"], rel=1e-6), r.get("on_policy")) for r in resumed if "kd" in r] == losses


# --- a teacher behind an endpoint (tunesmith serve) ----------------------------------------------


@pytest.fixture(scope="module")
def served_teacher(tmp_path_factory, tiny_teacher):
    """`tunesmith serve` of the tiny teacher (fp32) on a free port: {url, model}."""
    import signal

    from helpers import cli_env, start_server

    tmp = tmp_path_factory.mktemp("served-teacher")
    line, proc = start_server(["serve", str(tiny_teacher), "--port", "0", "--precision", "fp32"], tmp, cli_env(tmp))
    yield {"url": line.split(" at ")[1].split()[0], "model": tiny_teacher.name}  # served under its folder's name
    proc.terminate()
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


def sampled_batch(student_dir, tokenizer, date_data, n=4, seed=0):
    """A student's own replies to the first `n` training prompts, as on-policy distillation samples them."""
    from tunesmith.data.chat import prompt_ids
    from tunesmith.data.records import load_examples
    from tunesmith.eval.generate import Sampling
    from tunesmith.methods.rollout import sample_replies
    from tunesmith.model.load import load_for_inference

    student, tok = load_for_inference(str(student_dir), dtype=torch.float32)
    prompts = [prompt_ids(tok, e.messages[:-1]) for e in load_examples(str(date_data["train"]))[:n]]
    torch.manual_seed(seed)
    return sample_replies(student, tok, prompts, Sampling(max_new_tokens=8, temperature=1.0))[0]


def test_an_endpoint_teacher_scores_the_student_tokens_as_the_local_teacher_does(
    tmp_path, tiny_teacher, date_data, served_teacher, tokenizer
):
    from tunesmith.methods.distill_teachers import EndpointTeacher, LoadedTeacher
    from tunesmith.model.load import load_for_inference
    from tunesmith.model.student import create_student

    create_student(str(tiny_teacher), 2, tmp_path / "student")
    batch = sampled_batch(tmp_path / "student", tokenizer, date_data)
    local = LoadedTeacher(load_for_inference(str(tiny_teacher), dtype=torch.float32)[0], "local").token_logprobs(batch)
    remote = EndpointTeacher(served_teacher["url"], served_teacher["model"], None, tmp_path / "scores.jsonl")
    scored = remote.token_logprobs(batch)
    n_trained = int((batch["labels"][:, 1:] != -100).sum())
    assert scored.shape == local.shape == (n_trained,) and n_trained > 8
    assert (scored - local).abs().max() < 1e-4, (scored - local).abs().max()
    # the answers are cached: the same tokens again cost no request, also after a restart
    again = EndpointTeacher(served_teacher["url"], served_teacher["model"], None, tmp_path / "scores.jsonl")

    def no_request(sequences):
        raise AssertionError("asked the endpoint again")

    again.endpoint.score = no_request
    assert torch.equal(again.token_logprobs(batch), scored)


def test_an_on_policy_run_with_an_endpoint_teacher_logs_its_scores_and_resumes_without_asking_twice(
    tmp_path, tiny_teacher, date_data, served_teacher, tokenizer
):
    """Through a whole run: every logged token's teacher log-probability is the local teacher's
    (1e-4), the loss per token is the sampled reverse KL, the student moves towards the teacher,
    and a run killed and resumed gives the uninterrupted losses with each sequence scored once."""
    from helpers import read_jsonl

    from tunesmith.model.load import load_for_inference
    from tunesmith.model.student import create_student

    create_student(str(tiny_teacher), 2, tmp_path / "student")
    remote = {
        "teacher_model": served_teacher["model"],
        "loss": "reverse_kl",
        "on_policy": 1.0,
        "price_per_1k_tokens": 0.5,
    }
    url = served_teacher["url"]
    straight = on_policy_run(tmp_path, tmp_path / "student", url, date_data, "straight", **remote)
    run = tmp_path / "runs" / "straight"
    samples = read_jsonl(run / "samples.jsonl")
    assert [s["step"] for s in samples] == [step for step in range(1, 9) for _ in range(4)]  # 4 replies a step
    teacher, _ = load_for_inference(str(tiny_teacher), dtype=torch.float32)
    for s in samples[::5]:
        ids = tokenizer(s["prompt"], add_special_tokens=False)["input_ids"] + s["ids"]
        with torch.no_grad():
            logp = torch.log_softmax(teacher(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        n = len(s["ids"])
        local = [float(logp[len(ids) - n - 1 + i, t]) for i, t in enumerate(s["ids"])]
        assert s["teacher_logprob"] == pytest.approx(local, abs=1e-4)
        assert s["loss"] == pytest.approx([a - b for a, b in zip(s["student_logprob"], s["teacher_logprob"])], abs=2e-5)
    kd = [r["kd"] for r in straight if "kd" in r]
    assert kd[-1] < kd[0], kd
    usage = json.loads((run / "summary.json").read_text())["distill"]
    assert usage["sequences_scored"] == 32 and usage["cost"] == pytest.approx(usage["tokens_scored"] / 1000 * 0.5)

    def interrupt(step, record):
        if step == 6:
            raise KeyboardInterrupt  # after step 6 was logged; the checkpoint is step 4's

    with pytest.raises(KeyboardInterrupt):
        on_policy_run(tmp_path, tmp_path / "student", url, date_data, "resumed", on_record=interrupt, **remote)
    resumed = on_policy_run(tmp_path, tmp_path / "student", url, date_data, "resumed", resume=True, **remote)
    expected = [(r["step"], r["loss"]) for r in straight]
    assert [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in resumed] == expected
    keys = [r["key"] for r in read_jsonl(tmp_path / "runs" / "resumed" / "teacher_scores.jsonl")]
    assert len(keys) == len(set(keys)) == 32  # steps 5 and 6, sampled again, were answered from the cache
    assert read_jsonl(tmp_path / "runs" / "resumed" / "samples.jsonl") == samples  # the log cut back, then the same


# --- several teachers (distill.teachers) -------------------------------------------------------------


def test_several_teachers_mix_by_weight_or_teach_their_own_data_source(tmp_path, tiny_teacher, date_data, tokenizer):
    """Weights: the divergence is the weighted sum of each teacher's alone. Sources: each example's
    divergence is its own source's teacher's, as if each teacher had distilled its rows alone."""
    from tunesmith.config import validate_config
    from tunesmith.data.records import load_examples
    from tunesmith.engine.method import Setup
    from tunesmith.errors import UserError
    from tunesmith.methods.distill import Distillation
    from tunesmith.model.load import load_for_inference
    from tunesmith.model.student import create_student

    create_student(str(tiny_teacher), 2, tmp_path / "other")  # a second teacher: another model, the same tokenizer
    create_student(str(tiny_teacher), 1, tmp_path / "student")
    lines = date_data["train"].read_text().splitlines()
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:4]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[4:8]) + "\n")
    a, b, other = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), str(tmp_path / "other")
    student = load_for_inference(str(tmp_path / "student"), dtype=torch.float32)[0]

    def method(**distill):
        cfg = validate_config(
            {
                "name": "m",
                "method": "distill",
                "adapter": {"type": "none"},
                "data": {"train": [a, b]},
                "train": {"max_steps": 1, "precision": "fp32"},
                "distill": {"loss": "jsd", "kd_ratio": 1.0, **distill},
            }
        )
        m = Distillation(cfg)
        m.prepare(Setup(student, tokenizer, [], tmp_path, cfg, None))
        return m

    def features(m, path, source):
        out = [m.features(e, tokenizer) for e in load_examples(path)]
        for f in out:
            f["data_source"] = source
        return out

    def kd(m, feats):
        return m.loss(student, m.collate(feats, tokenizer))[1]["kd"]

    only_t, only_o = method(teacher=str(tiny_teacher)), method(teacher=other)
    mixed = features(only_t, a, 0)[:2] + features(only_t, b, 1)[:2]
    weighted = method(teachers=[{"teacher": str(tiny_teacher), "weight": 1.0}, {"teacher": other, "weight": 3.0}])
    assert kd(weighted, mixed) == pytest.approx(0.25 * kd(only_t, mixed) + 0.75 * kd(only_o, mixed), rel=1e-5)
    by_source = method(teachers=[{"teacher": str(tiny_teacher), "source": a}, {"teacher": other, "source": b}])
    assert kd(by_source, mixed) == pytest.approx(kd(only_t, mixed[:2]) + kd(only_o, mixed[2:]), rel=1e-5)
    assert kd(by_source, mixed) != pytest.approx(kd(only_t, mixed), rel=1e-3)  # the two teachers differ
    # on-policy: the replies to the batch's prompts are taught by the same mixture
    op_w, op_t, op_o = (
        method(on_policy=1.0, loss="reverse_kl", **t)
        for t in (
            {"teachers": [{"teacher": str(tiny_teacher), "weight": 1.0}, {"teacher": other, "weight": 3.0}]},
            {"teacher": str(tiny_teacher)},
            {"teacher": other},
        )
    )
    student.train()
    batches = [m.collate(mixed, tokenizer) for m in (op_w, op_t, op_o)]
    batches[0]["samples"] = []
    with torch.no_grad():
        op_w.rollout(student, batches[0])  # as the engine: the student's replies before the first loss
    for other_batch in batches[1:]:
        other_batch["rollout"] = batches[0]["rollout"]  # one set of sampled replies for all three
    kd_w, kd_t, kd_o = (m.loss(student, bt)[1]["kd"] for m, bt in zip((op_w, op_t, op_o), batches))
    assert kd_w == pytest.approx(0.25 * kd_t + 0.75 * kd_o, rel=1e-5) and kd_t != pytest.approx(kd_o, rel=1e-3)
    assert len(batches[0]["samples"]) == 4
    with pytest.raises(UserError, match="not one of data.train's paths"):
        method(teachers=[{"teacher": other, "source": "elsewhere.jsonl"}])
