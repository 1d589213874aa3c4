#!/usr/bin/env bash
# Before/after for the ecosystem review's H and M rows (issue 23): the same commands on the tree at $BEFORE
# (a git worktree) and on this checkout, with this checkout's venv, on a 1,500-document synthetic corpus.
#   bash results/ecosystem_before_after.sh > results/ecosystem_before_after.txt
# Work folders in ${WORK:-/tmp/ecosystem-ba}; takes about 5 minutes on 2 cores.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
BEFORE=${BEFORE:-84ccd88}
WORK=${WORK:-/tmp/ecosystem-ba}
PY=$REPO/.venv/bin/python
mkdir -p "$WORK"
[ -d "$WORK/before-tree" ] || git -C "$REPO" worktree add -f -q "$WORK/before-tree" "$BEFORE"
DATA=$WORK/synthetic
if [ ! -f "$DATA/manifest.json" ]; then
  (cd "$REPO" && $PY -m bench.synth --out "$WORK/raw" --n-docs 1500 --vocab-size 5000 --topic-words 100) >/dev/null 2>&1
  $PY "$REPO/jobs/prepare_data.py" text --raw "$WORK/raw" --out "$DATA" >/dev/null 2>&1
fi
export OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
unset RAY_ADDRESS MLFLOW_TRACKING_URI
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for tree in ${TREES:-before after}; do
  root=$([ "$tree" = before ] && echo "$WORK/before-tree" || echo "$REPO")
  W=$WORK/$tree; rm -rf "$W"; mkdir -p "$W"; cd "$W"
  echo "=== $tree ($root, $(git -C $root rev-parse --short HEAD))"
  $PY -c "import json,glob; rows=[json.loads(l) for l in open(sorted(glob.glob('$WORK/raw/*.jsonl'))[0])][:2]; open('q.txt','w').write(''.join(' '.join(r['text'].split()[:30])+'\n' for r in rows))"
  for s in 0 1; do $PY $root/jobs/train.py --local --data $DATA --out $W/m$s --bits 16 --hidden 64 --epochs 2 --seed $s >/dev/null 2>&1 || echo "train $s failed"; done
  $PY $root/jobs/search.py --model $W/m0/model --corpus $DATA --index-out $W/m0.npz --queries q.txt --k 3 > corpus.jsonl 2>/dev/null
  $PY $root/jobs/search.py --model $W/m0/model --index $W/m0.npz --queries q.txt --k 3 > index.jsonl 2>/dev/null
  $PY -c "import json; c=[json.loads(l) for l in open('corpus.jsonl')]; i=[json.loads(l) for l in open('index.jsonl')]; print('F12 --index answers == --corpus answers:', c==i, '| hit keys with --index:', sorted(i[0]['hits'][0]))"
  $PY $root/jobs/search.py --model $W/m1/model --index $W/m0.npz --queries q.txt --k 3 > other.jsonl 2> other.err
  echo "F1 another model's index: exit $? | $(tail -c 300 other.err | tr '\n' ' ')"
  port=$(free_port)
  start=$(date +%s.%N)
  RAY_ADDRESS=http://127.0.0.1:$port timeout 60 $PY $root/jobs/search.py --model $W/m0/model --index $W/m0.npz --queries q.txt --k 3 >/dev/null 2> http.err
  echo "F2 RAY_ADDRESS=http://... (nothing there): exit $? after $(printf %.1f $(echo "$(date +%s.%N) - $start" | bc)) s | $(grep -v '^\s*$' http.err | tail -1 | cut -c1-200)"
  start=$(date +%s.%N)
  timeout 60 $PY $root/jobs/search.py --model $W/m0/model --index $W/m0.npz --queries q.txt --k 3 --address 127.0.0.1:$port >/dev/null 2> gcs.err
  echo "F2 --address HOST:PORT (nothing there): exit $? after $(printf %.1f $(echo "$(date +%s.%N) - $start" | bc)) s (124 = killed by timeout 60) | $(grep -v '^\s*$' gcs.err | tail -1 | cut -c1-200)"
  timeout 500 $PY $root/jobs/train.py --data $DATA --bits 16 --hidden 64 --epochs 2 --num-workers 1 --storage $W/ray --name ba \
     --mlflow-uri sqlite:///$W/mlflow.db > train.out 2> train.err || echo "train on Ray failed: $(tail -3 train.err)"
  echo "F5 Ray Train console: $(grep -c 'TrainingReport' train.out train.err | paste -sd' ') TrainingReport lines; $(grep -cE 'epoch +[0-9]+  loss' train.err) corrhash epoch lines"
  $PY - "$W" 2>/dev/null <<'PY'
import os, sys
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
import mlflow
from mlflow.tracking import MlflowClient
W = sys.argv[1]
client = MlflowClient(f"sqlite:///{W}/mlflow.db")
run = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`corrhash.job` = 'ba'")[0]
experiment = client.get_experiment(run.info.experiment_id)
requirements = open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model/requirements.txt",
                    tracking_uri=client._tracking_client.tracking_uri)).read().split()
print("F3 requirements torch pin:", [r for r in requirements if r.startswith("torch")])
models = client.search_logged_models([run.info.experiment_id])
print("F4 logged model metrics:", sorted({m.key for m in (models[0].metrics or [])}) if models else "no model",
      "| dataset on them:", sorted({m.dataset_name for m in (models[0].metrics or []) if m.dataset_name}) if models else "")
print("F11 experiment kind:", experiment.tags.get("mlflow.experimentKind"))
print("F6 run lineage tags:", {k: v[:12] for k, v in run.data.tags.items() if k.startswith(("mlflow.source.git", "corrhash.source"))})
PY
done
