#!/usr/bin/env bash
# tunesmith against TRL on one CUDA GPU: LoRA and full SFT, tokens/s, peak GPU memory, MFU against
# the bf16 matmul peak measured on that GPU in the same run (bench/speed.py with BENCH_GPU set).
#
#   bench/gpu.sh prepare    here, with network: the wheels the GPU machine lacks and the models' shapes -> .gpu/
#   bench/gpu.sh run [OUT]  on the GPU machine, from the repository root with .gpu/ beside it (under 8 minutes)
#
# The GPU machine this is made for has python3 with PyTorch (CUDA), transformers, PEFT and accelerate
# and can download nothing, and what travels to it is limited in size: so the libraries are pinned
# here to this checkout's versions and carried as wheels, and the models are carried as their
# configurations and SmolLM2's tokenizer, not their weights. Both models (the bundled
# SmolLM2-135M-Instruct and Gemma 3 270M) are built there with random weights: speed, memory and
# MFU depend on the shapes, not the values; the held-out losses are then not comparable with the
# CPU tables' and only compare the two tools with each other. Gemma 3's vocabulary (262,144) is
# kept in its embedding and head; its text goes through SmolLM2's tokenizer (ids below 49,152).
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=.gpu
PY=${PYTHON:-.venv/bin/python}

prepare() {
  rm -rf "$HERE" && mkdir -p "$HERE/whl" "$HERE/models"
  local pins
  pins=$("$PY" - <<'EOF'
from importlib import metadata
names = ["transformers", "tokenizers", "huggingface_hub", "peft", "accelerate", "datasets", "dill", "multiprocess",
         "pydantic", "pydantic_core", "annotated_types", "typing_inspection", "hf_xet"]
print(" ".join(f"{n}=={metadata.version(n)}" for n in names) + " trl==1.16.0")
EOF
)
  # shellcheck disable=SC2086
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$HERE/whl" $pins
  "$PY" - "$HERE/models" <<'EOF'
import shutil, sys
from pathlib import Path
from tunesmith.model.resolve import resolve
out = Path(sys.argv[1])
for name in ("smollm2-135m-instruct", "gemma3-270m"):
    (out / name).mkdir(parents=True)
    shutil.copy(resolve(name).path / "config.json", out / name / "config.json")
tokenizer = out / "tokenizer"
tokenizer.mkdir()
for f in resolve("smollm2-135m-instruct").path.iterdir():
    if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
        shutil.copy(f, tokenizer / f.name)
EOF
  du -sh "$HERE"
}

run() {
  local out=${1:-${OUT:-bench/results}} site=/tmp/tunesmith-gpu-site
  python3 -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$site" "$HERE"/whl/*.whl
  export PYTHONPATH="$site:$PWD/src:$PWD/bench" BENCH_GPU=1 BENCH_TRL_PYTHON=python3 PYTHONUNBUFFERED=1
  export TUNESMITH_HOME=/tmp/tunesmith-home HF_HUB_OFFLINE=1
  python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())"
  python3 bench/gpu_model.py "$HERE/models" /tmp/tunesmith-gpu-models
  mkdir -p "$out"
  for model in smollm2-135m-instruct gemma3-270m; do  # about 3 minutes each: 3 seeds of 4 configurations
    timeout 225 python3 bench/speed.py --model "/tmp/tunesmith-gpu-models/$model" \
      --model-name "$model (random weights)" --examples 256 --repeats 3 \
      --only trl-padding-free,tunesmith,trl-full-packed,tunesmith-full-packed \
      --out "$out/speed-gpu-$model.json" || echo "bench/gpu.sh: $model did not finish (exit $?)"
  done
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu-smi.csv" || true
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: bench/gpu.sh prepare | run [OUT]" >&2; exit 2 ;;
esac
