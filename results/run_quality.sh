#!/usr/bin/env bash
# Reproduces results/quality.md: 20ng, default flags, val-selected, test p@100 at 32/64/128 bits.
# Usage: CORRHASH_RAW_DIR=../shared/data bash results/run_quality.sh   (two runs at a time, 1 thread each)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
test -d data/20ng || $PY jobs/prepare_data.py 20ng --out data/20ng
export OMP_NUM_THREADS=1
for model in corrsh nash; do for bits in 32 64 128; do echo "$model $bits"; done; done |
  xargs -P "${PARALLEL:-2}" -L 1 sh -c '$0 jobs/train.py --recipe authors --data data/20ng --local --model $1 --bits $2 --out runs/quality/20ng-$1-$2 > runs/quality-20ng-$1-$2.log 2>&1' "$PY"
$PY jobs/quality_table.py runs/quality/*/results.json
