#!/usr/bin/env bash
# Epoch time on 1 and 2 Ray Train CPU workers vs one plain process, and the Ray start-up overhead
# (job wall time minus the time inside epochs), on 20ng 32 bits, 3 epochs, embedded Ray + SQLite MLflow.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/corrhash-measure-ray}
rm -rf "$OUT"; mkdir -p "$OUT"
common=(--recipe authors --data data/20ng --bits 32 --epochs 3 --patience 100 --skip-test)
start=$(date +%s.%N); $PY jobs/train.py --local "${common[@]}" --out "$OUT/local" > "$OUT/local.log" 2>&1; end=$(date +%s.%N)
echo "local wall $(echo "$end - $start" | bc)" > "$OUT/walls.txt"
for n in 1 2; do
  start=$(date +%s.%N)
  $PY jobs/train.py "${common[@]}" --num-workers $n --cpus-per-worker $((2 / n)) --name measure-$n \
    --storage "$OUT/ray" --mlflow-uri "sqlite:///$OUT/mlflow.db" --out "$OUT/w$n" > "$OUT/w$n.log" 2>&1
  end=$(date +%s.%N); echo "w$n wall $(echo "$end - $start" | bc)" >> "$OUT/walls.txt"
done
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
walls = dict(line.split(" wall ") for line in (out / "walls.txt").read_text().splitlines())
local = [json.loads(l)["seconds"] for l in (out / "local" / "metrics.jsonl").read_text().splitlines()]
print("| run | epoch s (mean of 3) | job wall s | wall - epochs s |")
print("|---|---:|---:|---:|")
print(f"| plain process | {sum(local)/3:.2f} | {float(walls['local']):.1f} | {float(walls['local']) - sum(local):.1f} |")
for n in (1, 2):
    epochs = json.loads((out / f"w{n}" / "results.json").read_text())["epoch_seconds"]
    wall = float(walls[f"w{n}"])
    print(f"| Ray Train, {n} CPU worker(s) | {sum(epochs)/len(epochs):.2f} | {wall:.1f} | {wall - sum(epochs):.1f} |")
PY
