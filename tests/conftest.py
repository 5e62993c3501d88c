"""Fixtures: a tiny tokenizer and a tiny Llama (hidden 64, 2 layers) built here, no downloads, and
the generated date task; the helpers tests share are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import build_tokenizer, tiny_shape

# Under pytest-xdist (`make test` runs 3 workers) the cores are shared out between the workers, so
# torch in one worker does not spin its threads against the others'; set before torch is imported,
# and inherited by the CLIs and servers the tests start.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, (os.cpu_count() or 1) // WORKERS)))


def pytest_collection_modifyitems(config, items):
    """The tests on real models and the grouped ones (one worker runs a group: see docs/testing.md)
    first, in a stable order: minutes each, so started early they do not leave one worker running
    alone at the end."""
    items.sort(key=lambda item: not (item.get_closest_marker("slow") or item.get_closest_marker("xdist_group")))


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """An HF folder with a randomly initialised 2-layer Llama and the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        **tiny_shape(tokenizer, max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.1)
    )  # large enough that frozen random weights can be adapted
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def date_data(tmp_path_factory) -> dict[str, Path]:
    from tunesmith.tasks.dates import write_splits

    return write_splits(tmp_path_factory.mktemp("dates"), n_train=96, n_val=16, n_test=16, seed=7)
