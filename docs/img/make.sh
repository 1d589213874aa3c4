#!/usr/bin/env bash
# The screenshots in docs/img/, from a 16-trial tune on Reuters (64 bits) on the loopback cluster of
# cluster/local.sh, scraped by Prometheus with dashboards/prometheus/prometheus.yml as shipped.
# Needs: `make setup`, Reuters shards in data/reuters (jobs/prepare_data.py reuters --out data/reuters),
# the Debian packages prometheus and chromium. Takes ~10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=${NAME:-reuters64-tune16}
bash cluster/local.sh start
export PATH=$PWD/.venv/bin:$PATH RAY_ADDRESS=http://127.0.0.1:8265 RAY_AUTH_MODE=token \
  RAY_AUTH_TOKEN_PATH=$PWD/.cluster/auth_token MLFLOW_TRACKING_URI=http://127.0.0.1:5000
setsid prometheus --config.file=dashboards/prometheus/prometheus.yml --web.listen-address=127.0.0.1:9090 \
  --storage.tsdb.path=.cluster/prometheus > .cluster/prometheus.log 2>&1 & echo $! > .cluster/prometheus.pid
trap 'kill "$(cat .cluster/prometheus.pid)"; bash cluster/local.sh stop' EXIT

ray job submit --working-dir . --runtime-env-json \
  '{"env_vars": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "OMP_NUM_THREADS": "1"}}' \
  -- python jobs/tune.py --recipe authors --data "$PWD/data/reuters/" --bits 64 --num-samples 16 --max-concurrent 2 --epochs 30 \
  --grace-period 5 --name "$NAME" --storage "$PWD/runs/tune" --out "$PWD/runs/$NAME/best"

python jobs/report.py --run "$NAME" --mlflow-uri http://127.0.0.1:5000 --out "runs/$NAME/report.html"
python docs/img/screenshots.py --report "runs/$NAME/report.html" --out docs/img/report-tune16.png
python docs/img/screenshots.py --prometheus http://127.0.0.1:9090 --range 30m \
  --query "sum by (job_name, state) (ray_corrhash_tune_trials{job_name=\"$NAME\"})" \
  --out docs/img/prometheus-tune-trials.png
python docs/img/screenshots.py --prometheus http://127.0.0.1:9090 --range 30m \
  --query "max by (run) (ray_corrhash_val_precision{job_name=\"$NAME\"})" \
  --out docs/img/prometheus-val-precision.png
