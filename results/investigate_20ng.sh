#!/usr/bin/env bash
# Why CorrSH on 20ng lands below the paper: val-only runs (--skip-test), CorrSH 64 bits.
#   A: default data and flags, trained longer (convergence)
#   B: headers, signatures and quotes kept (--keep-boilerplate), default flags
#   C: TF-IDF rows not L2-normalized (--norm none), default flags
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RAW=${CORRHASH_RAW_DIR:?set CORRHASH_RAW_DIR}/20news-bydate/20news-bydate.tar.xz
test -d data/20ng || $PY jobs/prepare_data.py 20ng --raw "$RAW" --out data/20ng
test -d data/20ng-boiler || $PY jobs/prepare_data.py 20ng --raw "$RAW" --out data/20ng-boiler --keep-boilerplate
test -d data/20ng-nonorm || $PY jobs/prepare_data.py 20ng --raw "$RAW" --out data/20ng-nonorm --norm none
export OMP_NUM_THREADS=1
printf '%s\n' "data/20ng A --epochs 300" "data/20ng-boiler B --epochs 100" "data/20ng-nonorm C --epochs 100" |
  xargs -P "${PARALLEL:-3}" -L 1 sh -c '$0 jobs/train.py --local --recipe authors --data $1 --bits 64 --skip-test $3 $4 --out runs/investigate/$2 > runs/investigate-$2.log 2>&1' "$PY"
