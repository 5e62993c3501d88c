#!/usr/bin/env bash
# tinker-cookbook's own minimal loops (recipes/sl_loop.py, recipes/rl_loop.py), unmodified, against
# `tunesmith service` on this machine with the bundled model and local data, then the same API
# measures what they did. Run from anywhere after `make install` (first run: the cookbook's own
# environment, a few minutes). Everything goes to examples/tinker_cookbook/work/, the measured table
# to results/tinker-cookbook-<machine>.json. What each recipe is given, and why: prepare.py.
set -euo pipefail
cd "$(dirname "$0")"
TS=${TUNESMITH:-../../.venv/bin/tunesmith}
PY=${PYTHON:-../../.venv/bin/python}
ENV=${COOKBOOK_VENV:-.venv-cookbook}
START=$(date +%s)
# the cookbook pins transformers <= 5.5.4 (tunesmith needs newer): its own environment, torch pinned first
if [ ! -f "$ENV/.installed" ]; then
  python3 -m venv "$ENV"
  "$ENV/bin/python" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
  "$ENV/bin/python" -m pip install --quiet "tinker-cookbook[math-rl]==0.5.8" "tinker==0.38.0"
  touch "$ENV/.installed"
fi
CB=$(cd "$ENV" && pwd)/bin/python
W=$(pwd)/work
rm -rf work && mkdir work
"$PY" prepare.py work "$("$CB" -c 'import os, tinker_cookbook; print(os.path.dirname(tinker_cookbook.__file__))')"
MODEL=Qwen/Qwen3-4B-Instruct-2507
echo "tml-cookbook-example cookbook" > work/keys
"$TS" service --home work/home --port 0 --api-keys-file work/keys --model "$MODEL=smollm2-135m-instruct" \
  > work/service.out 2> work/service.err &
SERVICE=$!
trap 'kill $SERVICE 2>/dev/null; wait $SERVICE 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q " at http" work/service.out 2>/dev/null && break; sleep 1; done
URL=$(grep -o "http://[^ ]*/v1" work/service.out | head -1)
[ -n "$URL" ] || { cat work/service.err; exit 1; }
export TINKER_API_KEY=tml-cookbook-example HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
recipe() {  # FOLDER (the recipe's working directory) RECIPE LOG_NAME chz-arguments...
  local folder=$1 name=$2 log=$3; shift 3
  echo "== $name in work/$folder -> work/$log"
  (cd "$W/$folder" && "$CB" -m "tinker_cookbook.recipes.$name" "base_url=${URL%/v1}" "model_name=$MODEL" \
     "log_path=$W/$log" "$@") > "$W/$log.log" 2>&1 || { tail -20 "$W/$log.log"; exit 1; }
}
# sl_loop on the cookbook's example conversations: one epoch, 8 batches of 16
recipe recipes sl_loop sl batch_size=16 lora_rank=8 learning_rate=5e-4 save_every=0
# sl_loop on date conversations answered as \boxed{YYYYMMDD}: a warm start for RL (prepare.py says why)
recipe warmup sl_loop sl-warmup batch_size=16 lora_rank=8 learning_rate=1e-3 save_every=0 max_steps=4
# rl_loop resumes from its log folder's last checkpoint record: the warm-up's final state, at batch 0
mkdir -p work/rl
"$PY" -c "import json, sys; r = [json.loads(l) for l in open('work/sl-warmup/checkpoints.jsonl')][-1]; \
print(json.dumps({'name': 'warmup', 'batch': 0, 'state_path': r['state_path']}))" > work/rl/checkpoints.jsonl
recipe recipes rl_loop rl batch_size=8 group_size=8 max_tokens=24 lora_rank=8 learning_rate=1e-4 max_steps=8 save_every=0
echo "== before/after, through the same API"
"$CB" evaluate.py "${URL%/v1}" "$W" > work/evaluation.log 2>&1 || { tail -20 work/evaluation.log; exit 1; }
"$PY" summary.py work --record --started "$START"
