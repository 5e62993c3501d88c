#!/usr/bin/env bash
# A 10-layer student of the task-tuned bundled model (30 layers), taught five ways with the same data
# and the same number of updates: plain SFT, SFT on the teacher's replies, logit KD, and on-policy
# distillation with the teacher loaded and behind `tunesmith serve`; then the quickstart's LoRA with
# self-replay vs on-policy self-distillation against forgetting. Run from anywhere after
# `make install`; everything goes to examples/distill/work/, and the measured tables to
# results/distill-<machine>.json (README's and docs' tables are rendered from it).
set -euo pipefail
cd "$(dirname "$0")"
TS=${TUNESMITH:-../../.venv/bin/tunesmith}
PY=${PYTHON:-../../.venv/bin/python}
START=$(date +%s)
rm -rf work
"$PY" make_data.py work/data
"$TS" train teacher.yaml --quiet > /dev/null
"$TS" export work/runs/teacher --to work/teacher --merge > /dev/null
"$TS" student create work/teacher --layers 10 --out work/student > /dev/null
# sequence-level distillation's data: the teacher's greedy replies to the training prompts
"$TS" distill generate --teacher work/teacher --prompts work/data/train.jsonl --out work/teacher_replies.jsonl \
    --max-tokens 16 > /dev/null
"$TS" train sft.yaml --quiet > /dev/null
"$TS" train seqkd.yaml --quiet > /dev/null
"$TS" train distill.yaml --quiet > /dev/null
# on-policy students start from a short SFT run (GKD's and Thinking Machines' recipe); its steps count
"$TS" train warmup.yaml --quiet > /dev/null
"$TS" train onpolicy.yaml --quiet > /dev/null
# the same with the teacher behind an OpenAI-compatible endpoint: `tunesmith serve` on a free port
"$TS" serve work/teacher --port 0 --precision fp32 > work/serve.out 2> work/serve.err &
SERVER=$!
trap 'kill $SERVER 2> /dev/null || true' EXIT
for _ in $(seq 120); do grep -q " at http" work/serve.out 2> /dev/null && break; sleep 1; done
URL=$(grep -o "http://[0-9.:]*/v1" work/serve.out | head -1)
"$TS" train onpolicy.yaml --quiet --set name=student-onpolicy-endpoint --set distill.teacher="$URL" \
    --set distill.teacher_model=teacher --set distill.price_per_1k_tokens=0.0002 > /dev/null
kill $SERVER
"$TS" compare forgetting.yaml --quiet > /dev/null
"$PY" summary.py work/runs --seconds $(( $(date +%s) - START )) --record
