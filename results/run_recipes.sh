#!/usr/bin/env bash
# Reproduces the recipe evidence of results/best.md: CorrSH and NASH on Reuters under several KL schedules and
# learning rates (val selection only, seed 0), the 32-bit check of the chosen recipe, and the chosen default's
# own numbers. Every flag is given, so the jobs' default recipe does not change what these runs are.
# Usage: CORRHASH_RAW_DIR=../shared/data bash results/run_recipes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/recipes}
export OMP_NUM_THREADS=1
test -f data/reuters/manifest.json || $PY jobs/prepare_data.py reuters --out data/reuters
mkdir -p "$OUT"
{
  echo "corrsh-s0.02-lr1e-3 --model corrsh --bits 64 --anneal-step 0.02 --lr 1e-3 --epochs 100 --skip-test"
  echo "corrsh-s0.05-lr1e-3 --model corrsh --bits 64 --anneal-step 0.05 --lr 1e-3 --epochs 100 --skip-test"
  echo "corrsh-s1-lr3e-3 --model corrsh --bits 64 --anneal-step 1.0 --lr 3e-3 --epochs 100 --skip-test"
  echo "corrsh-s0.05-lr3e-3 --model corrsh --bits 64 --anneal-step 0.05 --lr 3e-3 --epochs 100 --skip-test"
  echo "corrsh-s0.05-lr3e-3-e200 --model corrsh --bits 64 --anneal-step 0.05 --lr 3e-3 --epochs 200 --patience 30 --skip-test"
  echo "nash-s0.05-lr3e-3 --model nash --bits 64 --anneal-step 0.05 --lr 3e-3 --epochs 100 --skip-test"
  echo "corrsh-32b-s0.05-lr1e-3 --model corrsh --bits 32 --anneal-step 0.05 --lr 1e-3 --epochs 150"
  echo "bmsh-32b-s0.05-lr1e-3 --model bmsh --bits 32 --anneal-step 0.05 --lr 1e-3 --epochs 150"
  echo "corrsh-64b-converge --model corrsh --bits 64 --recipe converge"
  echo "nash-64b-converge --model nash --bits 64 --recipe converge"
} | xargs -P "${PARALLEL:-2}" -L 1 sh -c \
  'test -f '"$OUT"'/$0/results.json || '"$PY"' jobs/train.py --local --data data/reuters --seed 0 --out '"$OUT"'/$0 "$@" > '"$OUT"'/$0.log 2>&1'
$PY jobs/quality_table.py "$OUT"/*/results.json
