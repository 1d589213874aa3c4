#!/usr/bin/env bash
# The measurements issue 33 asks for, resumable: SNUH and its correlated composition against the best -nbr model,
# corrsh-nbr against nash-nbr, and the budget rule's search over every family. Two runs at a time, 3 paired seeds.
# Usage: CORRHASH_RAW_DIR=../shared/data bash results/run_snuh.sh [STAGE ...]
#   stages (default: all, in order): snuh-64 snuh-rest pairs-64 search
#   snuh-64    snuh, corrsh-snuh and nash-nbr, 64 bits, Reuters and 20ng-18828, seeds 0-2
#   snuh-rest  the same at 32 and 128 bits
#   pairs-64   corrsh-nbr and nash-nbr (the paper's question with neighbours), 64 bits, both corpora, seeds 0-2
#   search     tune --models all --num-samples 24 (the budget rule) on Reuters 32 and 64 bits and 20ng 64 bits
# Finished runs (a results.json) are never rerun. Every model at its shipped defaults: the converge recipe, and for
# snuh and corrsh-snuh their own recipe over it (the SNUH authors' 20ng-64 recipe: models/snuh.py).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/snuh}
source results/local_runs.sh

cells() {  # "BITS..." "MODELS...": every run on both corpora, seeds 0-2, one per line
  for data in reuters 20ng-paper; do for bits in $1; do for seed in 0 1 2; do for model in $2; do
    echo "$data $bits $model $seed"; done; done; done; done
}

search() {  # DATA BITS: the budget rule's search over every family
  local name=search-$1-$2
  test -f "$OUT/$name/results.json" && return 0
  $PY jobs/tune.py --data "data/$1" --bits "$2" --models all --num-samples 24 --max-concurrent 2 \
    --name "$name" --storage "$PWD/$OUT/tune" --out "$OUT/$name" > "$OUT/$name.log" 2>&1 \
    || echo "failed: $name (see $OUT/$name.log)"
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(snuh-64 snuh-rest pairs-64 search)
for stage in "${stages[@]}"; do
  case $stage in
    snuh-64) cells 64 "snuh corrsh-snuh nash-nbr" | xargs -P 2 -L 1 bash -c 'one "$@"' _ ;;
    snuh-rest) cells "32 128" "snuh corrsh-snuh nash-nbr" | xargs -P 2 -L 1 bash -c 'one "$@"' _ ;;
    pairs-64) cells 64 "corrsh-nbr nash-nbr" | xargs -P 2 -L 1 bash -c 'one "$@"' _ ;;
    search) search reuters 32; search reuters 64; search 20ng-paper 64 ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
