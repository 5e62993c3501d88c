#!/usr/bin/env bash
# SFT -> reward model -> GRPO, and SFT -> DPO, on the bundled model; then what each stage measured.
# Run from anywhere after `make install`; everything goes to examples/rlhf/work/ (delete it to start over),
# and the measured table to results/rlhf-<machine>.json (README's table is rendered from it).
set -euo pipefail
cd "$(dirname "$0")"
TS=${TUNESMITH:-../../.venv/bin/tunesmith}
PY=${PYTHON:-../../.venv/bin/python}
START=$(date +%s)
rm -rf work
"$PY" make_data.py work/data
"$TS" train sft.yaml --quiet > /dev/null
"$TS" export work/runs/sft --to work/sft-merged --merge > /dev/null   # later stages train new adapters on it
"$TS" train reward.yaml --quiet > /dev/null
"$TS" train grpo.yaml --quiet > /dev/null
"$TS" train dpo.yaml --quiet > /dev/null
"$PY" summary.py work/runs --seconds $(( $(date +%s) - START )) --record
