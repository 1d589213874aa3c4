#!/usr/bin/env bash
# The benchmark on the lent GPU machine, as it is: its own python3 (torch with CUDA, numpy, scipy,
# pyarrow, scikit-learn; no faiss, ray, mlflow or optuna), no network, no install step.
#   bash bench/gpu.sh [extra python -m bench.run options]
# Reads the 20ng shards carried in bench/data/20ng (make bench-gpu-data prepares them here) and
# writes bench-gpu.json and bench-gpu.md to $OUT when set (the device tool brings $OUT back), else
# to results/. bench/README.md has the exact device call. Sized for under 6 minutes on an H100.
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
exec "$PY" -m bench.run --data "$DATA" --device "$DEVICE" "$@"
