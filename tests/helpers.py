"""What tests share besides fixtures: the tiny tokenizer and model families built here (no
downloads), run configs for the tiny model, ways to run the CLI and its servers, and what autograd
keeps for a backward pass."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus() -> list[str]:
    from tunesmith.tasks.dates import CITIES, INSTRUCTION, ITEMS, MONTHS, NAMES, SENTENCES, WEEKDAYS

    words = SENTENCES + MONTHS + NAMES + CITIES + ITEMS + WEEKDAYS + [INSTRUCTION]
    words += ["system", "user", "assistant", "You are a helpful assistant.", "Text:", "0123456789-,.;:#'"]
    return words * 5


def build_tokenizer(chat_template: str | None = CHATML, add_bos: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|im_start|> $A", pair="<|im_start|> $A $B", special_tokens=[("<|im_start|>", 1)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def tiny_shape(tokenizer, **overrides) -> dict:
    """The tiny models' shape (hidden 64, MLP 128, 2 layers, 4 heads, 2 of them for keys and values)
    with the tiny tokenizer's vocabulary and special ids; `overrides` change or add settings."""
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return {**shape, **overrides}


GEMMA3_ALTERNATING = ("sliding_attention", "full_attention", "sliding_attention")


def tiny_family(family: str, tokenizer, folder: Path, gemma3_layers: tuple[str, ...] = GEMMA3_ALTERNATING):
    """A tiny random model of a GGUF-exportable family with the tiny tokenizer, saved in `folder`;
    returns the model. Qwen 2 has its q_proj bias set (so biases matter); Qwen 3's GGUF metadata has
    no head width, so readers take its config default, 128, which this model uses; Mistral has no
    sliding window (llama.cpp's llama has none); Gemma 3 has window-4 layers and global ones, by
    default alternating, not in llama.cpp's default pattern, so the file must say which is which; its
    heads are 256 wide, as every Gemma 3's (GGUF readers derive the query scale from that width)."""
    import torch
    import transformers as tf

    common = tiny_shape(tokenizer, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.2)
    if family == "qwen2":
        config = tf.Qwen2Config(**common)
    elif family == "qwen3":
        config = tf.Qwen3Config(**common, head_dim=128)
    elif family == "mistral":
        config = tf.MistralConfig(**common, sliding_window=None)
    elif family == "gemma3":
        config = tf.Gemma3TextConfig(
            **{**common, "num_hidden_layers": len(gemma3_layers)},
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=4,
            layer_types=list(gemma3_layers),
        )
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).float()
    if family == "qwen2":
        torch.nn.init.normal_(model.model.layers[0].self_attn.q_proj.bias, std=0.5)
    if family == "gemma3":  # norms start at 0 (a scale of 1 + 0): random ones show whether the +1 is stored
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                torch.nn.init.normal_(p, std=0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def write_config(path: Path, model: Path | str, splits: dict[str, Path], out_dir: Path, **sections) -> Path:
    """A run config for the tiny model; keyword sections update the defaults (train=..., adapter=...)."""
    import yaml

    cfg = {
        "name": "tiny",
        "model": str(model),
        "method": "sft",
        "adapter": {"type": "lora", "r": 8, "alpha": 16, "targets": "all-linear"},
        "data": {"train": [{"path": str(splits["train"])}], "val": str(splits["val"]), "max_length": 256},
        "train": {"max_steps": 20, "batch_size": 8, "lr": 3e-3, "precision": "fp32", "log_every": 1, "warmup": 0},
        "output": {"dir": str(out_dir)},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("TUNESMITH_DEBUG", None)
    return env


def start_server(args: list[str], cwd: Path, env: dict, timeout: float = 120):
    """`python -m tunesmith ARGS` as a server: (its first stdout line, which says where it
    listens, and the process); fails the test with the server's stderr if no line comes."""
    import queue
    import subprocess
    import threading

    proc = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        return lines.get(timeout=timeout), proc
    except queue.Empty:
        proc.kill()
        pytest.fail(f"server did not start: {proc.stderr.read()[-2000:]}")


def train_until(config: Path, log: Path, tmp_path: Path, steps: int, timeout: float = 120, **popen):
    """`tunesmith train CONFIG --quiet` in a new process, returned once `log` (its metrics.jsonl)
    holds `steps` steps, or it ended, or `timeout` passed: for tests that stop a run mid-way."""
    import subprocess
    import time

    from tunesmith.engine.logbook import read_metrics

    proc = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "train", str(config), "--quiet"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        text=True,
        **popen,
    )
    deadline = time.time() + timeout
    while (not log.exists() or len(read_metrics(log)) < steps) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    return proc


def cli(args: list[str], tmp_path: Path, env_extra: dict | None = None, **kwargs):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args],
        capture_output=True,
        text=True,
        env={**cli_env(tmp_path), **(env_extra or {})},
        cwd=kwargs.pop("cwd", tmp_path),
        **kwargs,
    )


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli_here(
    args: list[str], tmp_path: Path, env_extra: dict | None = None, input: str | None = None, **_ignored
) -> CliResult:
    """`cli` without a new interpreter (seconds of imports per call): `main` in this process, in
    `tmp_path`, with the same environment, stdin and exit codes, output captured."""
    import contextlib
    import io

    from tunesmith.cli import main

    saved_env, saved_cwd, saved_stdin, saved_path = dict(os.environ), os.getcwd(), sys.stdin, list(sys.path)
    out, err, code = io.StringIO(), io.StringIO(), 0
    os.environ.clear()
    os.environ.update({**cli_env(tmp_path), **(env_extra or {})})
    sys.path[:0] = [
        p for p in (env_extra or {}).get("PYTHONPATH", "").split(os.pathsep) if p
    ]  # as a new interpreter would
    os.chdir(tmp_path)
    sys.stdin = io.StringIO(input or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.stdin, sys.path[:] = saved_stdin, saved_path
    return CliResult(code, out.getvalue(), err.getvalue())


def cli_in_process(args: list[str]):
    """The CLI in this process (no interpreter start-up and imports): for tests that call it many
    times. Exit codes of user errors come from `main`, so error cases go through `cli`."""
    from typer.testing import CliRunner

    from tunesmith.cli import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


@contextmanager
def saved_storages() -> Iterator[dict[int, int]]:
    """The storages autograd keeps for the backward pass of what runs inside, as {address: bytes}:
    each counted once, however many saved tensors view it."""
    import torch

    storages: dict[int, int] = {}
    held = []  # every storage counted stays alive while counting: a freed one's address may be reused

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        held.append(t.untyped_storage())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield storages
