"""Forgetting probe pieces and the mitigations: replay mixing, KL anchoring, L2-SP, freezing."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import cli_here, read_jsonl, write_config

from tunesmith.engine.anchors import WeightAnchor
from tunesmith.engine.sampler import EpochSampler
from tunesmith.forgetting import noise, probe
from tunesmith.forgetting.replay import replay_weight, whole_sentences


def test_bundled_probe_sets():
    qa = probe.general_qa()
    assert len(qa) >= 150
    assert len({q["question"] for q in qa}) == len(qa)
    assert all(q["answers"] and all(a.strip() for a in q["answers"]) for q in qa)
    probe_prompts, replay_prompts = probe.general_prompts()
    assert len(probe_prompts) >= 40 and len(replay_prompts) >= 80
    assert not set(probe_prompts) & set(replay_prompts)  # replay never trains on what drift measures


def test_probe_keeps_one_in_five_items_the_base_model_gets_wrong_in_every_prefix():
    qa = probe.general_qa()
    wrong = [q["base"] == "wrong" for q in qa]
    assert sum(wrong) == round(0.2 * len(qa))  # improvements can show, not only losses
    for limit in (30, 60, 100):  # forgetting.probe_limit takes a prefix: it keeps the share
        assert sum(wrong[:limit]) == limit // 5


def test_noise_floor_counts_items_flipped_between_two_base_passes():
    base = {
        "qa": [{"correct": 1.0}, {"correct": 1.0}, {"correct": 0.0}, {"correct": 1.0}],
        "drift": [{"nll": 0.5}, {"nll": 1.0}],
    }
    again = {
        "qa": [{"correct": 1.0}, {"correct": 0.0}, {"correct": 1.0}, {"correct": 1.0}],
        "drift": [{"nll": 0.6}, {"nll": 0.9}],
    }
    f = noise.floor(base, again, (32, 16))
    assert f["qa_flipped"] == 2 and f["qa"] == 0.5  # flips count both ways; they cancel in the mean, not here
    assert f["drift"] == pytest.approx(0.1)
    assert noise.other_batch_size(32) == 16 and noise.other_batch_size(1) == 2


@pytest.mark.parametrize(
    "change, floor, expected",
    [
        ({"mean": -0.10, "lo": -0.15, "hi": -0.05}, 0.02, "forgetting"),
        (
            {"mean": -0.03, "lo": -0.05, "hi": -0.01},
            0.05,
            "no forgetting",
        ),  # a significant drop, but within batching noise
        ({"mean": -0.03, "lo": -0.08, "hi": 0.02}, 0.02, "inconclusive"),  # could be a drop beyond the floor
        ({"mean": 0.0, "lo": -0.01, "hi": 0.01}, 0.02, "no forgetting"),
        ({"mean": 0.0, "lo": -0.01, "hi": 0.01}, 0.0, "inconclusive"),  # no floor: a possible drop is not ruled out
        ({"mean": 0.08, "lo": 0.04, "hi": 0.12}, 0.02, "gain"),
        ({"mean": 0.08, "lo": 0.04, "hi": 0.12}, 0.10, "no forgetting"),  # a rise within the floor is not a gain
    ],
)
def test_verdict_needs_both_the_interval_and_the_floor(change, floor, expected):
    assert noise.verdict(change, floor) == expected


def test_summary_by_hand():
    base = {
        "qa": [{"correct": 1.0}, {"correct": 1.0}, {"correct": 0.0}, {"correct": 1.0}],
        "drift": [{"nll": 0.5}, {"nll": 1.0}],
        "text": [{"nll": 20.0, "tokens": 10}, {"nll": 30.0, "tokens": 30}],
    }
    tuned = {
        "qa": [{"correct": 1.0}, {"correct": 0.0}, {"correct": 1.0}, {"correct": 0.0}],
        "drift": [{"nll": 1.0}, {"nll": 2.0}],
        "text": [{"nll": 30.0, "tokens": 10}, {"nll": 30.0, "tokens": 30}],
    }
    s = probe.summarize(base, tuned)
    assert s["qa"]["base"]["mean"] == 0.75 and s["qa"]["tuned"]["mean"] == 0.5
    assert s["qa"]["change"]["mean"] == pytest.approx(-0.25)
    assert s["qa"]["retention"] == pytest.approx(1 / 3)  # of the 3 the base answered, the tuned model keeps 1
    assert s["qa"]["gained"] == 1 and s["qa"]["lost"] == 2
    assert s["drift"]["increase"]["mean"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2
    assert "verdict" not in s["qa"]
    floored = probe.summarize(base, tuned, noise.floor(base, base, (32, 16)))
    assert floored["floor"]["qa"] == 0.0 and floored["qa"]["verdict"] == noise.verdict(s["qa"]["change"], 0.0)
    assert s["text"]["base_perplexity"] == pytest.approx(math.exp(50 / 40))  # token-weighted over documents
    assert s["text"]["tuned_perplexity"] == pytest.approx(math.exp(60 / 40))
    assert s["text"]["nll_increase"]["mean"] == pytest.approx(0.5)  # per-token NLL rises 1.0 on doc 1, 0 on doc 2


def test_cached_base_results_follow_the_text_file_contents(tmp_path):
    from tunesmith.forgetting.reference import data_version

    text = tmp_path / "general.jsonl"
    text.write_text('{"text": "one"}\n')
    before = data_version(str(text))
    assert data_version(str(text)) == before
    text.write_text('{"text": "two"}\n')
    assert data_version(str(text)) != before
    assert data_version("org/some-dataset") == "org/some-dataset" and data_version(None) is None


def test_replay_weight_makes_replay_the_asked_share_of_an_epoch():
    n_task, n_replay = 120, 50
    w = replay_weight(0.25, n_task, n_replay)
    assert w == pytest.approx(0.25 / 0.75 * 120 / 50)  # 0.8
    sampler = EpochSampler([n_task, n_replay], [1.0, w], [10] * (n_task + n_replay), 8, seed=0)
    epoch = sampler.epoch_examples(0)
    share = sum(i >= n_task for i in epoch) / len(epoch)
    assert share == pytest.approx(0.25, abs=0.01)  # 40 of 160


def test_whole_sentences_trims_a_cut_reply():
    assert whole_sentences("The first sentence. Two and thr") == "The first sentence."
    assert (
        whole_sentences("Hi. A much longer second sentence that was cut")
        == "Hi. A much longer second sentence that was cut"
    )
    assert whole_sentences("Done.") == "Done."
    assert whole_sentences("1. Sleep well\n2. Eat") == "1. Sleep well"
    assert whole_sentences("short") == "short"  # nothing to cut back to: kept


def test_sequence_nll_matches_cross_entropy_by_hand(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    feats = probe.reply_features(tokenizer, ["Text: Lyon"], ["Maria was born on May 1, 2001."])
    ((nll, count),) = probe.sequence_nll(model, tokenizer, feats)
    ids = torch.tensor([feats[0]["input_ids"]])
    labels = torch.tensor(feats[0]["labels"])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    keep = labels[1:] != -100
    expected = F.cross_entropy(logits[keep], labels[1:][keep], reduction="sum")
    assert count == int(keep.sum()) and nll == pytest.approx(float(expected), rel=1e-5)
    assert (
        feats[0]["input_ids"][max(i for i, x in enumerate(feats[0]["labels"]) if x != -100) + 1]
        == tokenizer.eos_token_id
    )


def test_weight_anchor_gradient_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    anchor = WeightAnchor([p], weight=0.5)
    with torch.no_grad():
        p += torch.tensor([2.0, -4.0])  # moved by (2, -4)
    p.grad = torch.tensor([1.0, 1.0])
    penalty = anchor.apply()
    assert penalty == pytest.approx(0.5 / 2 * (4 + 16))
    assert p.grad.tolist() == pytest.approx([1 + 0.5 * 2, 1 + 0.5 * -4])


def _train(tmp_path, model_dir, data, name, **sections):
    cfg = write_config(tmp_path / f"{name}.yaml", model_dir, data, tmp_path / "runs", name=name, **sections)
    r = cli_here(["train", str(cfg), "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path / "runs" / name


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "final" / "model.safetensors"))


def test_l2sp_keeps_full_fine_tuning_closer_to_the_start(tmp_path, tiny_model_dir, date_data):
    full = {
        "adapter": {"type": "none"},
        "train": {"max_steps": 10, "batch_size": 8, "lr": 3e-3, "precision": "fp32", "log_every": 1, "warmup": 0},
    }
    free = _weights(_train(tmp_path, tiny_model_dir, date_data, "free", **full))
    anchored_dir = _train(tmp_path, tiny_model_dir, date_data, "anchored", forgetting={"l2sp": 50.0}, **full)
    anchored = _weights(anchored_dir)
    start = _weights_of(tiny_model_dir)
    dist = {
        k: sum(float((w[n] - start[n]).pow(2).sum()) for n in start if n in w)
        for k, w in (("free", free), ("anchored", anchored))
    }
    assert dist["anchored"] < 0.5 * dist["free"]
    l2sp = [r["l2sp"] for r in read_jsonl(anchored_dir / "metrics.jsonl")]
    assert l2sp[0] == 0 and l2sp[-1] > 0, l2sp  # at the start the weights are the anchor; then they move from it


def _weights_of(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_freeze_layers_leaves_the_lowest_layer_and_embeddings_untouched(tmp_path, tiny_model_dir, date_data):
    run = _train(
        tmp_path,
        tiny_model_dir,
        date_data,
        "frozen",
        adapter={"type": "none"},
        forgetting={"freeze_layers": 1},
        train={"max_steps": 4, "batch_size": 8, "lr": 3e-3, "precision": "fp32", "log_every": 1, "warmup": 0},
    )
    after, start = _weights(run), _weights_of(tiny_model_dir)
    for name, w in start.items():
        moved = not torch.equal(after[name], w)
        if ".layers.0." in name or "embed_tokens" in name:
            assert not moved, name
        elif ".layers.1." in name and name.endswith("proj.weight"):
            assert moved, name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mitigation"]["freeze_layers"] == 1


def test_kl_anchor_is_zero_for_an_untouched_adapter_and_grows_with_training(tiny_model_dir, tokenizer, date_data):
    from tunesmith.config import validate_config
    from tunesmith.data.records import load_examples
    from tunesmith.methods.reference import ReferenceModel
    from tunesmith.methods.sft import SFT
    from tunesmith.model.adapters import apply_adapter
    from tunesmith.model.load import load_base

    cfg = validate_config(
        {
            "name": "k",
            "data": {"train": [str(date_data["train"])]},
            "train": {"max_steps": 1},
            "forgetting": {"replay": 0.2, "kl": 1.0},
        }
    )
    model = apply_adapter(load_base(tiny_model_dir), cfg.adapter)
    method = SFT(cfg)
    method.kl_anchor = ReferenceModel(model)
    feats = [method.features(e, tokenizer) for e in load_examples(date_data["train"])[:4]]
    for f in feats:
        f["anchor"] = True
    batch = method.collate(feats, tokenizer)
    _, metrics = method.loss(model, batch)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero: identical to the base
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    loss, metrics = method.loss(model, batch)
    assert metrics["kl"] > 1e-3
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
    unanchored = method.collate([{k: v for k, v in f.items() if k != "anchor"} for f in feats], tokenizer)
    assert "kl" not in method.loss(model, unanchored)[1]  # task data is never anchored


def test_self_distillation_is_zero_for_an_untouched_adapter_and_pulls_a_moved_one_back(
    tiny_model_dir, tokenizer, date_data
):
    """forgetting.self_distill: the tuned model's own replies to general prompts, scored by the
    starting model; the term is reverse KL(tuned ‖ start) on those tokens, by hand, and a step on
    it brings the tuned model back towards the start on the same replies."""
    from tunesmith.config import validate_config
    from tunesmith.data.records import load_examples
    from tunesmith.engine.method import Setup
    from tunesmith.forgetting.replay import general_prompt_ids
    from tunesmith.methods.reference import ReferenceModel
    from tunesmith.methods.sft import SFT
    from tunesmith.model.adapters import apply_adapter
    from tunesmith.model.load import load_base

    cfg = validate_config(
        {
            "name": "s",
            "data": {"train": [str(date_data["train"])]},
            "train": {"max_steps": 1},
            "forgetting": {"self_distill": {"weight": 2.0, "per_batch": 3, "max_new_tokens": 6}},
        }
    )
    torch.manual_seed(0)
    model = apply_adapter(load_base(tiny_model_dir), cfg.adapter)
    method = SFT(cfg)
    method.kl_anchor = ReferenceModel(model)
    method.self_distill.prompts = general_prompt_ids("self", tokenizer)
    method.prepare(Setup(model, tokenizer, [], None, cfg, None))
    feats = [method.features(e, tokenizer) for e in load_examples(date_data["train"])[:4]]
    batch = method.collate(feats, tokenizer)
    assert batch["general"]["prompts"] == method.collate(feats, tokenizer)["general"]["prompts"]  # chosen by the batch
    assert len(batch["general"]["prompts"]) == 3
    model.train()
    method.rollout(model, batch)  # as the engine: the model's replies to the general prompts before the loss
    _, metrics = method.loss(model, batch)
    assert metrics["self_distill"] == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero: the start itself
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    batch = method.collate(feats, tokenizer)
    method.rollout(model, batch)
    term, metrics = method.self_distill.loss(model, method.kl_anchor, tokenizer, batch)
    sampled = batch["general"]["batch"]
    at = sampled["labels"][:, 1:] != -100
    with torch.no_grad():
        tuned = torch.log_softmax(
            model(input_ids=sampled["input_ids"], attention_mask=sampled["attention_mask"]).logits[:, :-1][at].float(),
            -1,
        )
        with model.disable_adapter():
            start = torch.log_softmax(
                model(input_ids=sampled["input_ids"], attention_mask=sampled["attention_mask"])
                .logits[:, :-1][at]
                .float(),
                -1,
            )
    by_hand = float((tuned.exp() * (tuned - start)).sum()) * 2.0 * batch["n_items"] / int(at.sum())
    assert by_hand > 1e-3 and float(term) == pytest.approx(by_hand, rel=1e-4)
    term.backward()
    grads = [p for p in model.parameters() if p.grad is not None]
    norm = torch.sqrt(sum((p.grad**2).sum() for p in grads))
    with torch.no_grad():
        for p in grads:
            p.sub_(1e-3 * p.grad / norm)  # a small step down the gradient
    again, _ = method.self_distill.loss(model, method.kl_anchor, tokenizer, batch)  # the same sampled replies
    assert float(again) < float(term)


def test_self_distillation_in_a_run_logs_its_replies_and_names_the_mitigation(tmp_path, tiny_model_dir, date_data):
    run = _train(
        tmp_path,
        tiny_model_dir,
        date_data,
        "sd",
        forgetting={"self_distill": {"per_batch": 2, "max_new_tokens": 5}},
        train={"max_steps": 3, "batch_size": 4, "lr": 3e-3, "precision": "fp32", "log_every": 1, "warmup": 0},
    )
    samples = read_jsonl(run / "samples.jsonl")
    assert [s["step"] for s in samples] == [1, 1, 2, 2, 3, 3] and all(s["kind"] == "self_distill" for s in samples)
    assert all(len(s["loss"]) == len(s["ids"]) <= 5 for s in samples)
    assert all("self_distill" in r for r in read_jsonl(run / "metrics.jsonl") if "grad_norm" in r)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mitigation"]["self_distill"]["per_batch"] == 2
    assert "self-distillation 1 (2 self prompts a batch)" in (run / "report.md").read_text()
