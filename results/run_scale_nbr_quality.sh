#!/usr/bin/env bash
# Reproduces results/scale-nbr.md's "quality holds" table: nash-nbr at 64 bits on Reuters and 20ng-18828, trained on
# the exact document graph and on the pruned search's graph, seeds 0-2 (paired), shipped defaults otherwise. Two
# runs at a time; finished runs (a results.json) are never rerun, so the script resumes where it stopped.
# Usage: CORRHASH_RAW_DIR=../shared/data bash results/run_scale_nbr_quality.sh
# Then: .venv/bin/python results/scale_nbr_table.py quality runs/scale-nbr
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/scale-nbr}
export OMP_NUM_THREADS=1 PY OUT
mkdir -p "$OUT"
test -f data/reuters/manifest.json || $PY jobs/prepare_data.py reuters --out data/reuters
test -f data/20ng-paper/manifest.json || $PY jobs/prepare_data.py 20ng --release 18828 --out data/20ng-paper

one() {  # DATA SEARCH SEED: one plain-process run, kept if finished
  local data=$1 search=$2 seed=$3 name=$1-64-nash-nbr-$2-s$3
  test -f "$OUT/$name/results.json" && return 0
  mkdir "$OUT/$name.running" 2>/dev/null || return 0  # another driver runs it
  $PY jobs/train.py --local --data "data/$data" --bits 64 --model nash-nbr --graph-search "$search" --seed "$seed" \
    --out "$OUT/$name" > "$OUT/$name.log" 2>&1 || echo "failed: $name (see $OUT/$name.log)"
  rmdir "$OUT/$name.running"
}
export -f one
for data in reuters 20ng-paper; do for seed in 0 1 2; do for search in exact pruned; do
  echo "$data $search $seed"; done; done; done | xargs -P 2 -L 1 bash -c 'one "$@"' _
