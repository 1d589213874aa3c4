#!/usr/bin/env bash
# The benchmark on a GPU machine, in one command of a few minutes:
#   bash bench/gpu.sh [RAW_20NG_ARCHIVE]
# Sets up the environment if needed, prepares 20ng (from $CORRHASH_RAW_DIR, the given archive, or
# a download), then prints the same tables as the CPU run and writes results/bench-gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if ! "$PY" -c "import corrhash, torch, faiss" 2>/dev/null; then make setup; fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
if [ ! -f data/20ng/manifest.json ]; then
  "$PY" jobs/prepare_data.py 20ng --out data/20ng ${1:+--raw "$1"}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" jobs/bench.py --data data/20ng --device cuda --batch-sizes 100 500 2000 \
  --db-sizes 100000 1000000 --search-bits 64 128 --queries 10000 --reference-queries 1000 \
  --json results/bench-gpu.json
