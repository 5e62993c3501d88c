"""The loss mask: assistant content and its end-of-turn token are trained, nothing else; one BOS."""

from helpers import build_tokenizer

from tunesmith.data.chat import IGNORE, encode_chat, prompt_ids

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "When was the contract signed?"},
    {"role": "assistant", "content": "1999-03-03"},
    {"role": "user", "content": "And the deadline?"},
    {"role": "assistant", "content": "2001-12-24"},
]


def trained_text(tokenizer, enc) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs, cur = [], []
    for tid, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            assert lab == tid
            cur.append(tid)
        elif cur:
            runs.append(tokenizer.decode(cur))
            cur = []
    if cur:
        runs.append(tokenizer.decode(cur))
    return runs


def test_every_assistant_turn_and_its_eos_are_trained_nothing_else(tokenizer):
    enc = encode_chat(tokenizer, CONV, max_length=512)
    assert trained_text(tokenizer, enc) == ["1999-03-03<|im_end|>", "2001-12-24<|im_end|>"]
    eos = tokenizer.eos_token_id
    eos_positions = [i for i, t in enumerate(enc.input_ids) if t == eos]
    trained_eos = [i for i in eos_positions if enc.labels[i] == eos]
    assert len(trained_eos) == 2 and len(eos_positions) == 5  # system/user turns' EOS are not trained
    assert not enc.truncated


def test_newline_after_end_of_turn_is_not_trained(tokenizer):
    enc = encode_chat(tokenizer, CONV[:3], max_length=512)
    last_trained = max(i for i, lab in enumerate(enc.labels) if lab != IGNORE)
    assert enc.input_ids[last_trained] == tokenizer.eos_token_id
    assert all(lab == IGNORE for lab in enc.labels[last_trained + 1 :])


def test_prompt_ids_match_the_prefix_of_the_training_sequence(tokenizer):
    enc = encode_chat(tokenizer, CONV[:3], max_length=512)
    prompt = prompt_ids(tokenizer, CONV[:2])
    assert enc.input_ids[: len(prompt)] == prompt
    assert enc.labels[len(prompt)] != IGNORE and all(lab == IGNORE for lab in enc.labels[: len(prompt)])


def test_no_double_bos_when_tokenizer_adds_bos_and_template_has_it():
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tok = build_tokenizer(chat_template=template, add_bos=True)
    assert tok("hi")["input_ids"][0] == tok.bos_token_id  # this tokenizer would add a BOS by itself
    enc = encode_chat(tok, CONV[1:3], max_length=512)
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[1] != tok.bos_token_id
    assert enc.input_ids.count(tok.bos_token_id) == 1
    assert trained_text(tok, enc) == ["1999-03-03<|im_end|>"]


def test_template_without_eos_gets_eos_appended_and_trained():
    template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tok = build_tokenizer(chat_template=template)
    enc = encode_chat(tok, CONV[1:3], max_length=512)
    assert enc.input_ids[-1] == tok.eos_token_id and enc.labels[-1] == tok.eos_token_id


def test_a_model_without_template_trains_on_the_default_one_with_one_bos():
    tok = build_tokenizer(chat_template=None, add_bos=True)
    enc = encode_chat(tok, CONV, max_length=512)
    assert enc.input_ids.count(tok.bos_token_id) == 1
    assert trained_text(tok, enc) == ["1999-03-03<|im_end|>", "2001-12-24<|im_end|>"]
    assert tok.decode(enc.input_ids).startswith("<|im_start|><|system|>\nBe brief.\n<|user|>\nWhen was")
    asked = tok.decode(prompt_ids(tok, CONV[:2]))
    assert asked.endswith("<|user|>\nWhen was the contract signed?\n<|assistant|>\n")


def test_load_tokenizer_gives_a_base_model_the_default_template_and_saving_keeps_it(tmp_path):
    from tunesmith.data.chat import DEFAULT_CHAT_TEMPLATE
    from tunesmith.model.load import load_tokenizer

    build_tokenizer(chat_template=None).save_pretrained(tmp_path / "base")
    tok = load_tokenizer(tmp_path / "base")
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    tok.save_pretrained(tmp_path / "trained")  # what a run's final/ and an export hold
    assert load_tokenizer(tmp_path / "trained").chat_template == DEFAULT_CHAT_TEMPLATE
    build_tokenizer().save_pretrained(tmp_path / "chat")  # a model's own template is kept
    assert load_tokenizer(tmp_path / "chat").chat_template != DEFAULT_CHAT_TEMPLATE


def test_truncation_is_reported(tokenizer):
    enc = encode_chat(tokenizer, CONV, max_length=20)
    assert enc.truncated and len(enc.input_ids) == 20


LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
    "m['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def test_llama3_style_template_with_bos_in_the_template():
    tok = build_tokenizer(chat_template=LLAMA3, add_bos=True)
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.eos_token = "<|eot_id|>"
    enc = encode_chat(tok, CONV, max_length=512)
    assert enc.input_ids.count(tok.bos_token_id) == 1 and enc.input_ids[0] == tok.bos_token_id
    assert trained_text(tok, enc) == ["1999-03-03<|eot_id|>", "2001-12-24<|eot_id|>"]


def test_default_system_prompt_injected_by_the_template_is_not_trained(tokenizer):
    enc = encode_chat(tokenizer, CONV[1:3], max_length=512)  # no system turn: the template adds one
    assert "You are a helpful assistant." in tokenizer.decode(enc.input_ids)
    assert trained_text(tokenizer, enc) == ["1999-03-03<|im_end|>"]


def test_train_on_last_and_all(tokenizer):
    last = encode_chat(tokenizer, CONV, max_length=512, train_on="last")
    assert trained_text(tokenizer, last) == ["2001-12-24<|im_end|>"]
    every = encode_chat(tokenizer, CONV, max_length=512, train_on="all")
    assert every.labels == every.input_ids


def test_plain_text_trains_every_token_and_ends_with_eos(tokenizer):
    from tunesmith.data.chat import encode_text

    enc = encode_text(tokenizer, "The contract was signed in Lisbon.", max_length=512)
    assert enc.labels == enc.input_ids and enc.input_ids[-1] == tokenizer.eos_token_id
