#!/usr/bin/env bash
# Forgetting in weight space on the bundled model: the quickstart's LoRA interpolated towards its
# base, two task adapters (dates, tool calls) merged four ways, and the dates fine-tune moved to a
# new base (Gemma 3 270M). Run from anywhere after `make install`; everything goes to
# examples/weight_space/work/, the measured tables to results/weight-space-<machine>.json.
set -euo pipefail
cd "$(dirname "$0")"
TS=${TUNESMITH:-../../.venv/bin/tunesmith}
PY=${PYTHON:-../../.venv/bin/python}
START=$(date +%s)
rm -rf work
"$PY" -c "from pathlib import Path; from tunesmith.tasks.dates import write_splits; write_splits(Path('work/data/dates'), n_test=100)"
"$PY" ../tools/make_data.py work/data/tools
"$TS" compare dates.yaml                                     # interpolation next to replay
"$TS" train tools.yaml
for method in task_arithmetic linear ties dare_ties; do      # the two adapters merged, weights 1 each
  density=$([[ $method == *ties* ]] && echo "--density 0.5" || true)
  "$TS" merge work/runs/dates/variants/lora work/runs/tools --method "$method" $density --to "work/merged/$method"
done
"$PY" measure_merges.py work
"$TS" rebase work/runs/dates/variants/lora --to-base gemma3-270m --name dates-on-gemma --max-tokens 16 \
  --set forgetting.interpolate=[]
"$PY" summary.py work --seconds $(( $(date +%s) - START )) --record
