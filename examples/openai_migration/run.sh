#!/usr/bin/env bash
# OpenAI fine-tuning code, unchanged but for base_url, against `tunesmith service` on this machine:
# the date task (the quickstart's data), a job with "auto" hyperparameters on the bundled model, then
# the fine-tune vs the base model prompted zero- and 3-shot through the same API. Run from anywhere
# after `make install`; everything goes to examples/openai_migration/work/, the measured table to
# results/openai-migration-<machine>.json (README's table is rendered from it).
set -euo pipefail
cd "$(dirname "$0")"
TS=${TUNESMITH:-../../.venv/bin/tunesmith}
PY=${PYTHON:-../../.venv/bin/python}
START=$(date +%s)
rm -rf work
"$PY" -c "from pathlib import Path; from tunesmith.tasks.dates import write_splits; write_splits(Path('work/data'), n_train=320, n_val=32, n_test=100)"
"$TS" service --home work/home --port 0 > work/service.out 2> work/service.err &
SERVICE=$!
trap 'kill $SERVICE 2>/dev/null; wait $SERVICE 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q " at http" work/service.out 2>/dev/null && break; sleep 1; done
URL=$(grep -o "http://[^ ]*/v1" work/service.out | head -1)
[ -n "$URL" ] || { cat work/service.err; exit 1; }
"$PY" client.py "$URL" --record --started "$START"
