# Sourced by results/run_neighbours.sh and results/run_snuh.sh (after `cd` to the checkout, with OUT set): the
# paper's two corpora prepared once, and `one DATA BITS MODEL SEED`, one plain-process run kept if finished, which
# xargs -P runs two at a time; a `.running` folder keeps a second driver off a run in progress.
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 PY OUT
mkdir -p "$OUT"
test -f data/reuters/manifest.json || $PY jobs/prepare_data.py reuters --out data/reuters
test -f data/20ng-paper/manifest.json || $PY jobs/prepare_data.py 20ng --release 18828 --out data/20ng-paper

one() {  # DATA BITS MODEL SEED: one plain-process run, kept if finished
  local data=$1 bits=$2 model=$3 seed=$4 name=$1-$2-$3-s$4
  test -f "$OUT/$name/results.json" && return 0
  mkdir "$OUT/$name.running" 2>/dev/null || return 0  # another driver runs it
  $PY jobs/train.py --local --data "data/$data" --bits "$bits" --model "$model" --seed "$seed" --out "$OUT/$name" \
    > "$OUT/$name.log" 2>&1 || echo "failed: $name (see $OUT/$name.log)"
  rmdir "$OUT/$name.running"
}
export -f one
