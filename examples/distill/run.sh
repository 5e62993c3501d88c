#!/usr/bin/env bash
# A 10-layer student of the task-tuned bundled model (30 layers): distilled vs plain SFT, same data
# and steps. Run from anywhere after `make install`; everything goes to examples/distill/work/, and the
# measured table to results/distill-<machine>.json (README's table is rendered from it).
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
"$TS" train distill.yaml --quiet > /dev/null
"$TS" train sft.yaml --quiet > /dev/null
"$PY" summary.py work/runs --seconds $(( $(date +%s) - START )) --record
