#!/usr/bin/env bash
# Reproduces results/best.md: for each corpus and code length, one cross-method search (jobs/tune.py --models),
# then the chosen model and config re-run on 3 seeds, each searched method's default-recipe number, and CorrSH
# against NASH on 3 paired seeds at the best recipe found.
# Usage: CORRHASH_RAW_DIR=../shared/data bash results/run_best.sh [STAGE ...]
#   stages (default: all, in this order): search-reuters-64 search-20ng-paper-64 search-reuters-32
#   search-reuters-128 search-20ng-paper-128 search-20ng-paper-32; each search stage also runs its reruns.
#   Finished runs (a results.json) are never rerun, so the script resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/best}
MODELS=${MODELS:-corrsh,nash,bmsh,sth}
export OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
mkdir -p "$OUT"
test -f data/reuters/manifest.json || $PY jobs/prepare_data.py reuters --out data/reuters
test -f data/20ng-paper/manifest.json || $PY jobs/prepare_data.py 20ng --release 18828 --out data/20ng-paper

# The search's budget per corpus: trials, the epoch top (ASHA's max_t) and the grace period.
budget() { case $1 in reuters) echo "12 60 8";; *) echo "10 60 8";; esac; }

search() {  # DATA BITS: the cross-method search, its best scored once on test
  local data=$1 bits=$2 name=best-$1-$2b
  read -r samples epochs grace <<<"$(budget "$data")"
  test -f "$OUT/$name/best/results.json" && return 0
  /usr/bin/time -f "%e s wall" -o "$OUT/$name.time" \
    $PY jobs/tune.py --data "data/$data" --bits "$bits" --models "$MODELS" --num-samples "$samples" \
      --max-epochs "$epochs" --grace-period "$grace" --max-concurrent 2 --cpus-per-trial 1 --name "$name" \
      --storage "$PWD/$OUT/tune" --mlflow-uri "sqlite:///$OUT/mlflow.db" --out "$OUT/$name/best" \
      > "$OUT/$name.log" 2>&1
}

flags_of() {  # RESULTS.json [MODEL]: the train.py flags that re-run its model and config (MODEL: another model)
  $PY - "$@" <<'EOF'
import json, sys
results = json.load(open(sys.argv[1]))
model, train = dict(results["model"]), results["train"]
name = sys.argv[2] if len(sys.argv) > 2 else model["name"]
flags = ["--model", name, "--recipe", "authors"]  # every value is given: the recipe only fills gaps
for key, value in {**{k: v for k, v in model.items() if k not in ("name", "seed")},
                   **{k: v for k, v in train.items() if k not in ("seed", "device")}}.items():
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        flags.append(flag if value else "--no-" + flag[2:])
    elif value is not None:
        flags += [flag, str(value)]
print(" ".join(flags))
EOF
}

train() {  # DATA TAG SEED FLAGS...: one plain-process run, kept if finished
  local data=$1 tag=$2 seed=$3; shift 3
  test -f "$OUT/runs/$tag-s$seed/results.json" && return 0
  $PY jobs/train.py --local --data "data/$data" --seed "$seed" --out "$OUT/runs/$tag-s$seed" "$@" \
    > "$OUT/runs/$tag-s$seed.log" 2>&1
}
export -f train
export PY OUT

reruns() {  # DATA BITS: 3 seeds of the chosen config; default recipe per method; CorrSH vs NASH paired
  local data=$1 bits=$2 name=best-$1-$2b
  local best="$OUT/$name/best/results.json"
  mkdir -p "$OUT/runs"
  chosen=$(flags_of "$best")
  {
    for seed in 0 1 2; do echo "$data $name-chosen $seed $chosen"; done
    # Each method under the first converge recipe, as the table was made (the shipped one keeps lr 1e-3, 150
    # epochs: results/run_recipes.sh measures it).
    for model in ${MODELS//,/ }; do
      echo "$data $data-$bits-$model-default 0 --model $model --bits $bits --recipe converge --lr 3e-3 --epochs 100"
    done
    # CorrSH and NASH at the best recipe (the chosen config's, with each model's own parts at their defaults
    # where the chosen model has none), 3 paired seeds.
    for model in corrsh nash; do
      f=$(flags_of "$best" "$model")
      for seed in 0 1 2; do echo "$data $name-$model-at-best $seed $f"; done
    done
  } | xargs -P 2 -L 1 bash -c 'train "$@"' _
}

stages=("$@")
((${#stages[@]})) || stages=(search-reuters-64 search-20ng-paper-64 search-reuters-32 search-reuters-128
                             search-20ng-paper-128 search-20ng-paper-32)
for stage in "${stages[@]}"; do
  rest=${stage#search-}; data=${rest%-*}; bits=${rest##*-}
  echo "[$(date +%T)] $stage"
  search "$data" "$bits"
  reruns "$data" "$bits"
done
$PY results/best_table.py "$OUT" > "$OUT/best-tables.md"
echo "[$(date +%T)] wrote $OUT/best-tables.md"
