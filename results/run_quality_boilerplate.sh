#!/usr/bin/env bash
# Supplement to results/quality.md: the same runs on 20ng prepared with --keep-boilerplate
# (headers, signatures and quotes kept, as the benchmark .mat files the paper used appear to be).
# Usage: CORRHASH_RAW_DIR=../shared/data bash results/run_quality_boilerplate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
test -d data/20ng-boiler || $PY jobs/prepare_data.py 20ng --keep-boilerplate --out data/20ng-boiler
export OMP_NUM_THREADS=1
for model in corrsh nash; do for bits in 32 64 128; do echo "$model $bits"; done; done |
  xargs -P "${PARALLEL:-2}" -L 1 sh -c '$0 jobs/train.py --local --recipe authors --data data/20ng-boiler --model $1 --bits $2 --out runs/quality-boiler/20ng-$1-$2 > runs/quality-boiler-20ng-$1-$2.log 2>&1' "$PY"
$PY jobs/quality_table.py runs/quality-boiler/*/results.json
