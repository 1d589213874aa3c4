#!/usr/bin/env bash
# Reproduces results/scale-nbr.md's graph tables (bench/graph.py; each case resumes from the JSON it appends to).
# Run it on an otherwise idle machine: Ray runs its workers at niceness 15, so any other load starves the Ray cases.
# Usage: CORRHASH_RAW_DIR=../shared/data bash results/run_scale_nbr.sh [real synthetic million two-nodes streamed
#   e2e e2e-two-nodes]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/scale-nbr}
mkdir -p "$OUT"
test -f data/reuters/manifest.json || $PY jobs/prepare_data.py reuters --out data/reuters
test -f data/20ng-paper/manifest.json || $PY jobs/prepare_data.py 20ng --release 18828 --out data/20ng-paper
stages=${*:-real synthetic million two-nodes streamed e2e e2e-two-nodes}
for stage in $stages; do
  case $stage in
    real) $PY -m bench.graph --data data/reuters data/20ng-paper --methods exact pruned --workers 0 1 2 \
            --out "$OUT/graph-real.json" ;;
    synthetic) $PY -m bench.graph --docs 10000 100000 --methods exact pruned --workers 0 2 \
                 --out "$OUT/graph-synthetic.json" ;;
    million) $PY -m bench.graph --docs 1000000 --methods exact pruned --workers 0 --out "$OUT/graph-synthetic.json" ;;
    two-nodes)  # a head and a second node of 1 CPU each on this machine: the blocks go to both
      export RAY_AUTH_MODE=disabled
      .venv/bin/ray stop --force >/dev/null 2>&1 || true
      .venv/bin/ray start --head --num-cpus 1 --port 6391 --node-ip-address 127.0.0.1 --include-dashboard false >/dev/null
      .venv/bin/ray start --address 127.0.0.1:6391 --num-cpus 1 --node-ip-address 127.0.0.1 >/dev/null
      $PY -m bench.graph --data data/20ng-paper --methods pruned --workers 2 --address 127.0.0.1:6391 \
        --out "$OUT/graph-two-nodes.json" 2>&1 | tee "$OUT/graph-two-nodes.log" | tail -n 3
      .venv/bin/ray stop --force >/dev/null ;;
    streamed)  # nash-nbr on 20ng-18828 held whole and streamed (2,000-row buffers): peak RSS and epoch times
      $PY jobs/graph.py --data data/20ng-paper >/dev/null
      for mode in never always; do
        test -f "$OUT/streamed-$mode.time" && continue
        /usr/bin/time -v -o "$OUT/streamed-$mode.time.tmp" $PY jobs/train.py --local --data data/20ng-paper --bits 64 \
          --model nash-nbr --epochs 3 --stream $mode --stream-buffer 2000 --out "$OUT/streamed-$mode-run" \
          > "$OUT/streamed-$mode.log" 2>&1
        mv "$OUT/streamed-$mode.time.tmp" "$OUT/streamed-$mode.time"
      done
      grep -H "Maximum resident" "$OUT"/streamed-*.time; grep -H "epoch " "$OUT"/streamed-*.log | cut -c1-160 ;;
    e2e) $PY -m bench.end_to_end --sizes 10000 100000 --out "$OUT/e2e.json" ;;
    e2e-two-nodes)  # the same pipeline at 10k on a head and a second node of 1 CPU each
      export RAY_AUTH_MODE=disabled
      .venv/bin/ray stop --force >/dev/null 2>&1 || true
      .venv/bin/ray start --head --num-cpus 1 --port 6391 --node-ip-address 127.0.0.1 --include-dashboard false >/dev/null
      .venv/bin/ray start --address 127.0.0.1:6391 --num-cpus 1 --node-ip-address 127.0.0.1 >/dev/null
      $PY -m bench.end_to_end --sizes 10000 --address 127.0.0.1:6391 --out "$OUT/e2e.json"
      .venv/bin/ray stop --force >/dev/null ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
