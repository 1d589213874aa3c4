#!/usr/bin/env bash
# Reproduces results/neighbours.md: the -nbr models against their plain versions and STH, 3 paired seeds, at the
# shipped defaults (`--recipe converge`, neighbours 25, neighbour weight 1, knn graph). Two runs at a time.
# Usage: CORRHASH_RAW_DIR=../shared/data bash results/run_neighbours.sh [STAGE ...]
#   stages (default: all, in this order): nash-reuters nash-20ng-paper-64 nash-20ng-paper-rest corrsh-reuters-64
#   corrsh-20ng-paper-64. Finished runs (a results.json) are never rerun, so the script resumes where it stopped.
# Then: .venv/bin/python results/neighbours_table.py runs/nbr > results/neighbours.md
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/nbr}
source results/local_runs.sh

cells() {  # DATA "BITS..." "MODELS...": every run, seeds 0-2, one per line
  for bits in $2; do for seed in 0 1 2; do for model in $3; do echo "$1 $bits $model $seed"; done; done; done
}

stage() {
  case $1 in
    nash-reuters) cells reuters "32 64 128" "nash-nbr nash sth";;
    nash-20ng-paper-64) cells 20ng-paper 64 "nash-nbr nash sth";;
    corrsh-reuters-64) cells reuters 64 "corrsh-nbr corrsh";;
    nash-20ng-paper-rest) cells 20ng-paper "32 128" "nash-nbr nash sth";;
    corrsh-20ng-paper-64) cells 20ng-paper 64 "corrsh-nbr corrsh";;
    *) echo "unknown stage $1" >&2; exit 2;;
  esac
}

STAGES=${*:-nash-reuters nash-20ng-paper-64 nash-20ng-paper-rest corrsh-reuters-64 corrsh-20ng-paper-64}
for s in $STAGES; do stage "$s"; done | xargs -P 2 -L 1 bash -c 'one "$@"' _
