#!/usr/bin/env bash
# The benchmark on the lent GPU machine, as it is: its own python3 (torch with CUDA, numpy, scipy,
# pyarrow, scikit-learn; no faiss, ray, mlflow or optuna), no network, no install step.
#   bash bench/gpu.sh [extra python -m bench.run options]
# Reads the 20ng shards carried in bench/data/20ng (make bench-gpu-data prepares them here) and
# writes bench-gpu.json and bench-gpu.md to $OUT when set (the device tool brings $OUT back), else
# to results/, with the graph section's graph-gpu.json and graph-gpu.md. bench/README.md has the exact device call.
# Sized for under 8 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
# PY, DATA and DEVICE exist for the CPU smoke test (tests/test_bench_gpu_script.py).
PY=${PY:-python3}
DATA=${DATA:-bench/data/20ng}
DEVICE=${DEVICE:-cuda}
# corrhash from platform/ (nothing is installed there); bench from the repository root, the working directory.
export PYTHONPATH=platform${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
test -f "$DATA/manifest.json" || { echo "no shards in $DATA: run 'make bench-gpu-data' and carry bench/data" >&2; exit 2; }
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
fi
# The document graph: the blocked exact search as a torch product on the device against the CPU's (scipy) search
# of the same sampled rows, on the synthetic corpus at GRAPH_DOCS documents (issue 31). The device searches every
# row; the CPU's searches of more than GRAPH_FULL_MAX documents are timed on GRAPH_QUERIES sampled rows and scaled.
GRAPH_OUT=${OUT:-results}/graph-gpu.json
"$PY" -m bench.graph --docs ${GRAPH_DOCS:-100000 1000000} --methods exact-torch exact --device "$DEVICE" \
  --full-max "${GRAPH_FULL_MAX:-20000}" --queries "${GRAPH_QUERIES:-500}" --out "$GRAPH_OUT" | tee "${GRAPH_OUT%.json}.md"
exec "$PY" -m bench.run --data "$DATA" --device "$DEVICE" "$@"
