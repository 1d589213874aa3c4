#!/usr/bin/env bash
# A local Ray head and MLflow server on loopback, for `ray job submit` from this checkout.
#   bash cluster/local.sh start    # prints the addresses to export
#   bash cluster/local.sh stop     # stops both by PID
# State (PIDs, logs, MLflow DB and artifacts) lives in ${CORRHASH_CLUSTER_DIR:-.cluster}.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${CORRHASH_CLUSTER_DIR:-.cluster}
VENV_BIN=$(cd .venv/bin && pwd)
RAY_PORT=${RAY_PORT:-6379} DASHBOARD_PORT=${DASHBOARD_PORT:-8265} MLFLOW_PORT=${MLFLOW_PORT:-5000}
export PATH="$VENV_BIN:$PATH" RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
case "${1:-}" in
  start)
    mkdir -p "$DIR"
    # Loopback only, so Ray's token authentication is turned off; keep it on for any other address.
    RAY_AUTH_MODE=disabled setsid ray start --head --block --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
      --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --disable-usage-stats \
      > "$DIR/ray.log" 2>&1 & echo $! > "$DIR/ray.pid"
    setsid mlflow server --backend-store-uri "sqlite:///$(pwd)/$DIR/mlflow.db" \
      --artifacts-destination "$(pwd)/$DIR/mlartifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
      > "$DIR/mlflow.log" 2>&1 & echo $! > "$DIR/mlflow.pid"
    for url in "http://127.0.0.1:$DASHBOARD_PORT/api/version" "http://127.0.0.1:$MLFLOW_PORT/health"; do
      for _ in $(seq 120); do curl -sf "$url" >/dev/null && break; sleep 1; done
      curl -sf "$url" >/dev/null || { echo "not up: $url (see $DIR/*.log)" >&2; exit 1; }
    done
    echo "export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
    ;;
  stop)
    for name in ray mlflow; do
      [ -f "$DIR/$name.pid" ] || continue
      pid=$(cat "$DIR/$name.pid")
      kill -TERM "$pid" 2>/dev/null || true   # `ray start --block` stops what it started on SIGTERM
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null || true  # then anything left in its process group
      rm -f "$DIR/$name.pid"
    done
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
