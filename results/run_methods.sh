#!/usr/bin/env bash
# Reproduces results/methods.md: every registered method on Reuters at 32 and 64 bits, default flags,
# val-selected, test p@100 once. Two runs at a time, one thread each.
# Usage: CORRHASH_RAW_DIR=../shared/data bash results/run_methods.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/reuters}
test -d "$DATA" || $PY jobs/prepare_data.py reuters --out "$DATA"
export OMP_NUM_THREADS=1 DATA
mkdir -p runs/methods
for model in lsh srbm sph sth vdsh nash bmsh corrsh corrsh-mixture; do for bits in 32 64; do echo "$model $bits"; done; done |
  xargs -P "${PARALLEL:-2}" -L 1 sh -c \
    'test -f runs/methods/reuters-$1-$2/results.json || $0 jobs/train.py --recipe authors --data "$DATA" --local --model $1 --bits $2 --out runs/methods/reuters-$1-$2 > runs/methods/reuters-$1-$2.log 2>&1' "$PY"
$PY jobs/quality_table.py runs/methods/*/results.json
