"""GGUF exports read by llama.cpp itself (llama-cpp-python, built from its source distribution
once into a cached environment): the bundled model answers as in transformers, token for token,
and Qwen 2 / Qwen 3 exports give transformers' logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

LLAMA_CPP = "llama-cpp-python==0.3.36"
ENV = Path.home() / ".cache" / "tunesmith-tests" / "llama-cpp-0.3.36"  # built once per machine (minutes)
RUNNER = Path(__file__).with_name("llama_cpp") / "run_gguf.py"


@pytest.fixture(scope="session")
def llama_cpp_python() -> Path:
    python = ENV / "bin" / "python"
    if not (ENV / ".built").is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(ENV)], check=True)
        env = {**os.environ, "CMAKE_ARGS": "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF",
               "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        build = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-binary", "llama-cpp-python", LLAMA_CPP],
                               capture_output=True, text=True, env=env, timeout=1800)
        assert build.returncode == 0, f"building {LLAMA_CPP} failed: {build.stderr[-3000:]}"
        (ENV / ".built").write_text(LLAMA_CPP)
    return python


def llama_cpp(python: Path, model: Path, prompts: list[list[int]], mode: str, max_tokens: int = 24):
    job = {"model": str(model), "prompts": prompts, "mode": mode, "max_tokens": max_tokens}
    result = subprocess.run([str(python), str(RUNNER)], input=json.dumps(job), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_the_bundled_model_s_gguf_answers_in_llama_cpp_as_in_transformers(llama_cpp_python, tmp_path):
    from tunesmith.data.chat import prompt_ids
    from tunesmith.export.exporter import export
    from tunesmith.forgetting.probe import general_prompts
    from tunesmith.model.load import load_for_inference
    from tunesmith.model.resolve import BUNDLED_ALIAS

    export(BUNDLED_ALIAS, tmp_path / "gguf", format="gguf", quant="f16")
    [gguf_file] = (tmp_path / "gguf").glob("*.gguf")
    model, tok = load_for_inference(BUNDLED_ALIAS, dtype=torch.float32)
    prompts = [prompt_ids(tok, [{"role": "user", "content": p}]) for p in general_prompts()[0][:8]]
    expected = []
    for ids in prompts:
        out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        expected.append(out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out)
    assert llama_cpp(llama_cpp_python, gguf_file, prompts, "greedy") == expected


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_qwen_exports_give_transformers_logits_in_llama_cpp(llama_cpp_python, tmp_path, tokenizer, family):
    from conftest import tiny_qwen

    from tunesmith.export.exporter import export

    model = tiny_qwen(family, tokenizer, tmp_path / "model")
    export(str(tmp_path / "model"), tmp_path / "gguf", format="gguf", quant="f16")
    [gguf_file] = (tmp_path / "gguf").glob("*.gguf")
    ids = [5, 17, 42, 99, 7, 250, 31, 8]
    with torch.no_grad():  # the file's f16 weights; llama.cpp computes parts in f16 as well
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(p.half().float())
        expected = model(input_ids=torch.tensor([ids])).logits[0]
    [ours] = llama_cpp(llama_cpp_python, gguf_file, [ids], "logits")
    ours = torch.tensor(ours)
    assert (ours - expected).abs().max() < 0.05, (ours - expected).abs().max()  # wrong q/k rows: off by 3 to 6
    assert torch.equal(ours.argmax(-1), expected.argmax(-1))
