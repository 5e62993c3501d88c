"""Every model family trains as the model itself computes: per-token log-probabilities and
gradients of the training path (segment attention, the chunked output head) equal the family's
own eager forward pass on each sequence alone, for padded and packed batches, with sequences
longer than the sliding window. Tiny random models from each family's config (no downloads)."""

from __future__ import annotations

import shutil

import pytest
import torch

from tunesmith.data.collate import collate_tokens
from tunesmith.data.packing import pack_features
from tunesmith.methods.logprobs import token_logprobs
from tunesmith.model.gated_mlp import restore_mlp, use_lean_mlp
from tunesmith.model.segment_attention import restore_attention, use_segment_attention

WINDOW = 6  # sliding window of the families that have one; the sequences below are longer
LENGTHS = [13, 9, 17, 5]
VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.4,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def family_config(family: str):
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(**COMMON, head_dim=8)
    if family == "mistral":
        return tf.MistralConfig(**COMMON, head_dim=8, sliding_window=WINDOW)
    if family == "qwen2":
        return tf.Qwen2Config(
            **COMMON,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=0,
            layer_types=["sliding_attention", "full_attention"],
        )
    if family == "qwen3":
        return tf.Qwen3Config(
            **COMMON,
            head_dim=8,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=0,
            layer_types=["sliding_attention", "full_attention"],
        )
    if family == "phi3":
        return tf.Phi3Config(**{**COMMON, "pad_token_id": 0}, sliding_window=WINDOW)
    if family == "gemma2":
        return tf.Gemma2Config(
            **COMMON,
            head_dim=8,
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=1.0,
            final_logit_softcapping=2.0,
            layer_types=["sliding_attention", "full_attention"],
        )
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            **{**COMMON, "num_key_value_heads": 1},
            head_dim=16,
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention"],
        )
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"]


def build(family: str, attention: str | None = None):
    """The family's model with the attention transformers picks by default (as `load_base` loads
    it: SDPA, or eager where the family has no SDPA path), or the one named."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    chosen = {} if attention is None else {"attn_implementation": attention}
    return AutoModelForCausalLM.from_config(family_config(family), **chosen).float()


def features(seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in LENGTHS:
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    return out


def own_logprobs(model, feats: list[dict], autocast: bool = False) -> torch.Tensor:
    """The model's own forward on each sequence alone: its labelled tokens' log-probabilities, in order."""
    logps = []
    for f in feats:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=torch.tensor([f["input_ids"]])).logits[0, :-1].float()
        targets = torch.tensor(f["labels"][1:])
        keep = targets != -100
        logps.append(logits.log_softmax(-1)[keep].gather(1, targets[keep][:, None])[:, 0])
    return torch.cat(logps)


def reference(family: str, feats: list[dict], autocast: bool = False):
    """The family's own eager forward on each sequence alone: labelled tokens' log-probabilities
    (in order) and the gradient of their sum."""
    model = build(family, "eager")
    logps = own_logprobs(model, feats, autocast)
    logps.sum().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def training_path(family: str, feats: list[dict], packed: bool, autocast: bool = False):
    model = build(family)
    previous = use_segment_attention(model)
    assert previous == ("eager" if family == "gemma2" else "sdpa")  # transformers has no SDPA Gemma 2
    rows = [pack_features(feats[:2]), pack_features(feats[2:])] if packed else feats
    batch = collate_tokens(rows, pad=0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logps, _ = token_logprobs(model, batch)
    logps.sum().backward()
    restore_attention(model, previous)
    return logps.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("family", FAMILIES)
def test_training_path_equals_the_family_forward_in_fp32(family, packed):
    feats = features()
    ref_logps, ref_grads = reference(family, feats)
    logps, grads = training_path(family, feats, packed)
    assert logps.shape == ref_logps.shape
    assert torch.allclose(logps, ref_logps, atol=1e-5), (logps - ref_logps).abs().max()
    assert set(grads) == set(ref_grads)
    # relative to each gradient's scale: sums over every token of the batch, in fp32
    worst = max(
        ((grads[n] - ref_grads[n]).abs().max().item() / max(1.0, ref_grads[n].abs().max().item()), n) for n in grads
    )
    assert worst[0] < 1e-5, worst


@pytest.mark.parametrize("family", FAMILIES)
def test_training_path_in_bf16_is_as_close_as_the_family_own_bf16(family):
    feats = features(seed=1)
    exact, _ = reference(family, feats)
    own_bf16, _ = reference(family, feats, autocast=True)
    ours_bf16, _ = training_path(family, feats, packed=True, autocast=True)
    own_error = (own_bf16 - exact).abs().mean().item()
    our_error = (ours_bf16 - exact).abs().mean().item()
    assert our_error <= 1.5 * own_error + 1e-3, (our_error, own_error)


def _saving_path(model, feats: list[dict], autocast: bool):
    """token_logprobs on packed rows: log-probs, gradients, and the bytes saved for backward."""
    from helpers import saved_storages

    model.zero_grad()
    batch = collate_tokens([pack_features(feats[:2]), pack_features(feats[2:])], pad=0)
    with saved_storages() as storages:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logps, _ = token_logprobs(model, batch)
    logps.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), grads, sum(storages.values()), batch["input_ids"].numel()


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_lean_gated_mlp_trains_bit_for_bit_and_keeps_two_tensors_less(family, autocast):
    model = build(family)
    feats = features(seed=2)
    previous = use_segment_attention(model)
    own = _saving_path(model, feats, autocast)
    lean_layers = use_lean_mlp(model)
    lean = _saving_path(model, feats, autocast)
    restore_mlp(lean_layers)
    restore_attention(model, previous)
    layers = model.config.num_hidden_layers
    if family == "phi3":  # gate and up are one projection: its own forward stays
        assert lean_layers == []
        return
    assert len(lean_layers) == layers
    assert torch.equal(lean[0], own[0])
    for name, g in own[1].items():
        assert torch.equal(lean[1][name], g), name
    tokens, width = own[3], model.config.intermediate_size
    size = 2 if autocast else 4  # in the dtype the MLP computes in
    assert own[2] - lean[2] == 2 * layers * tokens * width * size  # the activation's output, and the product
    assert all("forward" not in m.__dict__ for m in lean_layers)


EXPECTED_TARGETS = {
    "attention": {"phi3": {"qkv_proj", "o_proj"}, "*": {"q_proj", "k_proj", "v_proj", "o_proj"}},
    "mlp": {"phi3": {"gate_up_proj", "down_proj"}, "*": {"gate_proj", "up_proj", "down_proj"}},
}


@pytest.mark.parametrize("preset", ["attention", "mlp"])
@pytest.mark.parametrize("family", FAMILIES)
def test_target_presets_name_each_family_s_own_modules(family, preset):
    from tunesmith.model.adapters import lora_targets

    expected = EXPECTED_TARGETS[preset].get(family, EXPECTED_TARGETS[preset]["*"])
    assert set(lora_targets(build(family, "eager"), preset)) == expected


def lora_model(family: str, attention: str | None):
    from tunesmith.config import AdapterConfig
    from tunesmith.model.adapters import apply_adapter

    model = apply_adapter(build(family, attention), AdapterConfig(type="lora", r=4, targets="all-linear"))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a trained adapter, not the zero update it starts as
            torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_training_path_equals_peft_forward(family):
    """Fused LoRA and segment attention against PEFT's own forward of the family, eager, per sequence."""
    from tunesmith.model.fused_lora import restore_lora, use_fused_lora
    from tunesmith.model.peft_wrapping import unwrap

    feats = features(seed=2)
    reference_model = lora_model(family, "eager")
    ref = own_logprobs(reference_model, feats)
    ref.sum().backward()
    ref_grads = {n: p.grad for n, p in reference_model.named_parameters() if p.grad is not None}

    model = lora_model(family, None)
    previous, fused = use_segment_attention(unwrap(model)), use_fused_lora(model)
    assert fused, "no LoRA layer took the fused path"
    logps, _ = token_logprobs(model, collate_tokens([pack_features(feats[:2]), pack_features(feats[2:])], pad=0))
    logps.sum().backward()
    restore_lora(fused)
    restore_attention(unwrap(model), previous)
    assert torch.allclose(logps.detach(), ref.detach(), atol=1e-5), (logps - ref).abs().max()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == set(ref_grads) and all("lora_" in n for n in grads)
    worst = max((grads[n] - ref_grads[n]).abs().max().item() / max(1.0, ref_grads[n].abs().max().item()) for n in grads)
    assert worst < 1e-5, worst


ADAPTERS = ["lora", "dora", "ia3", "prefix", "prompt", "qlora", "none"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Each family's tiny model saved as a Hugging Face folder, for the real loaders."""
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        build(family).save_pretrained(folder)
        out[family] = folder
    return out


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_adapter_type_trains_on_every_family(family_dirs, family, adapter):
    """Loaded as a run loads it (QLoRA: a 4-bit base), the adapter on, one forward and backward
    through the training path: a finite loss and a gradient on every trained tensor."""
    from tunesmith.config import AdapterConfig
    from tunesmith.model.adapters import apply_adapter
    from tunesmith.model.load import load_base
    from tunesmith.model.peft_wrapping import unwrap
    from tunesmith.model.quantize import require_bitsandbytes, settings

    options = {
        "lora": {"r": 4},
        "dora": {"type": "lora", "r": 4, "dora": True},
        "qlora": {"r": 4},
        "prefix": {"virtual_tokens": 4},
        "prompt": {"virtual_tokens": 4},
    }.get(adapter, {})
    cfg = AdapterConfig(**{"type": adapter, **options})
    if adapter == "qlora":
        require_bitsandbytes()
    quantization = settings(cfg, torch.float32) if adapter == "qlora" else None
    model = apply_adapter(load_base(family_dirs[family], quantization=quantization), cfg).train()
    use_segment_attention(unwrap(model))
    feats = features(seed=3)
    rows = feats if adapter in ("prefix", "prompt") else [pack_features(feats[:2]), pack_features(feats[2:])]
    logps, _ = token_logprobs(model, collate_tokens(rows, pad=0))
    assert torch.isfinite(logps).all() and logps.numel() == sum(n - 2 for n in LENGTHS)
    (-logps.sum()).backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trained)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_reward_head_scores_every_family(family_dirs, family):
    from tunesmith.model.load import load_base

    model = load_base(family_dirs[family], head="score")
    model.config.pad_token_id = 0
    scores = model(
        input_ids=torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]]),
        attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
    ).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_student_keeps_the_chosen_layers_and_their_kinds(family_dirs, family, tmp_path):
    """`student create` on every family: the kept layers' weights, and per-layer attention kinds
    (sliding or full) that still match them, in a model that loads and runs."""
    from helpers import build_tokenizer
    from transformers import AutoModelForCausalLM

    from tunesmith.model.student import create_student

    teacher = tmp_path / "teacher"
    shutil.copytree(family_dirs[family], teacher)
    build_tokenizer().save_pretrained(teacher)
    result = create_student(str(teacher), 1, tmp_path / "student", strategy="last")
    assert result["layers"] == [1]
    original = AutoModelForCausalLM.from_pretrained(teacher)
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert student.config.num_hidden_layers == 1
    kinds = getattr(original.config, "layer_types", None)
    if kinds is not None:
        assert student.config.layer_types == [kinds[1]]
    kept = {n.replace("layers.0.", "layers.1.", 1): p for n, p in student.named_parameters()}
    assert all(torch.equal(p, dict(original.named_parameters())[n]) for n, p in kept.items())
    assert torch.isfinite(student(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])).logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_distillation_from_every_family(family_dirs, family, tmp_path):
    """The distillation loss on a packed batch, through the training path: a model taught by
    itself diverges by zero; a one-layer student of it (`student create`) by more than zero, with
    a finite gradient on every weight."""
    from tunesmith.config import RunConfig
    from tunesmith.methods.distill import Distillation
    from tunesmith.methods.distill_teachers import LoadedTeacher
    from tunesmith.model.student import create_student

    config = RunConfig(
        name="kd",
        method="distill",
        data={"train": [{"path": "unused.jsonl"}]},
        train={"max_steps": 1},
        distill={"teacher": str(family_dirs[family]), "loss": "forward_kl", "kd_ratio": 1.0},
    )
    method = Distillation(config)
    teacher = build(family).eval().requires_grad_(False)
    use_segment_attention(teacher)
    method.teachers, method.vocab = [LoadedTeacher(teacher, "itself")], VOCAB
    feats = features(seed=5)
    batch = collate_tokens([pack_features(feats[:2]), pack_features(feats[2:])], pad=0)
    itself = build(family)
    use_segment_attention(itself)
    assert float(method.loss(itself, batch)[0]) == pytest.approx(0.0, abs=1e-4)

    from helpers import build_tokenizer

    shutil.copytree(family_dirs[family], tmp_path / "teacher")
    build_tokenizer().save_pretrained(tmp_path / "teacher")
    create_student(str(tmp_path / "teacher"), 1, tmp_path / "student", strategy="last")
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student").float().train()
    use_segment_attention(student)
    loss, logs = method.loss(student, batch)
    assert float(loss) > 0.01 and logs["kd"] > 0.01
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_run_says_once_what_takes_the_exact_attention(family):
    """One log line per run: soft-capped scores send every sequence to the exact eager attention,
    a sliding window the sequences longer than it; the fast path otherwise."""
    from tunesmith.model.segment_attention import exact_path_note

    config = family_config(family)
    long, short = exact_path_note(config, [WINDOW + 1, WINDOW, 3]), exact_path_note(config, [WINDOW, 3])
    if family == "llama":
        assert long is None and short is None
    elif family == "gemma2":
        assert "every sequence" in long and "every sequence" in short
    else:
        assert f"1 of 3 training sequences are longer than the {WINDOW}-token sliding window" in long and short is None
