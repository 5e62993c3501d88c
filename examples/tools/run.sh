#!/usr/bin/env bash
# Tool calling on the bundled model: prompted with the tools vs LoRA-tuned, scored on the calls,
# with forgetting. Run from anywhere after `make install`; everything goes to examples/tools/work/,
# and the measured table to results/tools-<machine>.json (README's table is rendered from it).
set -euo pipefail
cd "$(dirname "$0")"
TS=${TUNESMITH:-../../.venv/bin/tunesmith}
PY=${PYTHON:-../../.venv/bin/python}
START=$(date +%s)
rm -rf work
"$PY" make_data.py work/data
"$TS" compare tools.yaml
"$PY" summary.py work/runs/tools --seconds $(( $(date +%s) - START )) --record
