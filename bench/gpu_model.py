"""The benchmark's models with random weights, from their configurations (bench/gpu.sh prepare
copies them): a GPU machine that can download nothing builds them from a few kilobytes.

    python3 bench/gpu_model.py .gpu/models OUT

Every configuration under .gpu/models/NAME/config.json becomes OUT/NAME, a Hugging Face folder
with freshly initialised weights and the tokenizer in .gpu/models/tokenizer (its special-token
ids written into the configuration). Speed and memory depend on the shapes alone; the weights
are the library's own initialisation, seeded.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def build(config_dir: Path, tokenizer_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.from_pretrained(config_dir)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name)
        setattr(config, name, value if value is not None else tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    print(f"{out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {config.model_type}")


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    for config in sorted(source.glob("*/config.json")):
        build(config.parent, source / "tokenizer", out / config.parent.name)


if __name__ == "__main__":
    main()
