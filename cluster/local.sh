#!/usr/bin/env bash
# A local Ray head (token authentication on) and an MLflow server, for `ray job submit` from this checkout.
#   bash cluster/local.sh start    # prints the exports and a ready-made `ray job submit` line
#   bash cluster/local.sh start --postgres   # the team setup (cluster/mlflow/): MLflow on a private PostgreSQL,
#                                            # behind basic auth, artifacts proxied through the server
#   bash cluster/local.sh stop     # stops all of it by PID
# State (PIDs, logs, the Ray token, MLflow DB and artifacts) lives in ${CORRHASH_CLUSTER_DIR:-.cluster}, mode 0700
# (0710 for the database's account with --postgres as root); with --postgres also postgres/, mlflow/ and the
# MLflow admin's initial password in mlflow-admin-password (0600).
# What listens where and what protects it: cluster/SECURITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "${CORRHASH_CLUSTER_DIR:-.cluster}"
DIR=$(cd "${CORRHASH_CLUSTER_DIR:-.cluster}" && pwd)
VENV_BIN=$(cd .venv/bin && pwd)
START_TIMEOUT_S=${CORRHASH_START_TIMEOUT_S:-120}  # seconds each server may take to answer (more on a busy host)
RAY_PORT=${RAY_PORT:-6379} DASHBOARD_PORT=${DASHBOARD_PORT:-8265} MLFLOW_PORT=${MLFLOW_PORT:-5000}
RAY_CLIENT_PORT=${RAY_CLIENT_PORT:-10001} DASHBOARD_AGENT_PORT=${DASHBOARD_AGENT_PORT:-52365}
TOKEN=$DIR/auth_token
# Every Ray process and client reads the token from this file; it never appears in argv, output or logs.
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's single-node mode: it keeps the node address on 127.0.0.1,
# where Ray on Linux would rewrite it to the LAN address and bind its agents and proxy there.
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: MLflow 3.17's server otherwise forks ~10 idle huey job consumers
# (~230 MB each, polling), for GenAI jobs corrhash never submits.
export PATH="$VENV_BIN:$PATH" RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true \
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
unset RAY_AUTH_TOKEN RAY_ADDRESS  # a token or cluster from the caller's shell must not win over ours

POSTGRES=0
case "${1:-} ${2:-}" in
  "start --postgres") POSTGRES=1 ;;
  "start "|"stop ") ;;
  *) echo "usage: $0 start [--postgres] | stop" >&2; exit 2 ;;
esac
ADMIN_PASSWORD=$DIR/mlflow-admin-password

alive() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop() {
  for name in ray mlflow; do
    [ -f "$DIR/$name.pid" ] || continue
    pid=$(cat "$DIR/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true   # `ray start --block` stops what it started on SIGTERM
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true  # then anything left in its process group (setsid: pgid = pid)
    for _ in $(seq 20); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$DIR/$name.pid"
  done
  # The team setup (--postgres): its own scripts stop what they started, the database last.
  [ ! -f "$DIR/mlflow/mlflow.pid" ] || CORRHASH_MLFLOW_DIR=$DIR/mlflow bash cluster/mlflow/serve.sh stop
  [ ! -f "$DIR/postgres/postgres.pid" ] || CORRHASH_PG_DIR=$DIR/postgres bash cluster/mlflow/postgres.sh stop
}

# The team setup: PostgreSQL in $DIR/postgres, MLflow (basic auth, proxied artifacts) in $DIR/mlflow. Ray jobs
# inherit the head's environment, so the head gets the MLflow credentials: no password in any runtime env.
start_team_mlflow() {
  local settings
  if [ "$(id -u)" = 0 ]; then  # PostgreSQL runs as its own account, which must pass through $DIR
    chgrp "$(bash cluster/mlflow/postgres.sh account)" "$DIR" && chmod 710 "$DIR"
  fi
  [ -s "$ADMIN_PASSWORD" ] ||
    (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(24), end="")' > "$ADMIN_PASSWORD")
  settings=$(CORRHASH_PG_DIR=$DIR/postgres bash cluster/mlflow/postgres.sh start) || return 1
  eval "$settings"  # CORRHASH_MLFLOW_DB_URI, CORRHASH_MLFLOW_AUTH_DB_URI, PGPASSFILE: shell-quoted, no secrets
  # One MLflow worker, as without --postgres: one machine's jobs (serve.sh's 4 are for a team's); each worker
  # is a process of ~5 CPU-seconds to start and ~200 MB. CORRHASH_MLFLOW_WORKERS overrides it.
  CORRHASH_MLFLOW_DB_URI=$CORRHASH_MLFLOW_DB_URI CORRHASH_MLFLOW_AUTH_DB_URI=$CORRHASH_MLFLOW_AUTH_DB_URI \
    PGPASSFILE=$PGPASSFILE CORRHASH_MLFLOW_DIR=$DIR/mlflow CORRHASH_MLFLOW_ARTIFACTS=$DIR/mlartifacts \
    CORRHASH_MLFLOW_HOST=127.0.0.1 CORRHASH_MLFLOW_PORT=$MLFLOW_PORT CORRHASH_MLFLOW_ADMIN_USERNAME=admin \
    CORRHASH_MLFLOW_ADMIN_PASSWORD_FILE=$ADMIN_PASSWORD MLFLOW=$VENV_BIN/mlflow \
    CORRHASH_MLFLOW_WORKERS=${CORRHASH_MLFLOW_WORKERS:-1} \
    bash cluster/mlflow/serve.sh start > /dev/null || return 1
  export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT MLFLOW_TRACKING_USERNAME=admin
  MLFLOW_TRACKING_PASSWORD=$(cat "$ADMIN_PASSWORD")
  export MLFLOW_TRACKING_PASSWORD
}

# Polls an authenticated URL while checking that the process we started ($2) is still the one serving.
wait_up() {
  local url=$1 pid=$2 name=$3
  echo "waiting for $name at $url (up to ${START_TIMEOUT_S}s, CORRHASH_START_TIMEOUT_S)..."
  for _ in $(seq "$START_TIMEOUT_S"); do
    kill -0 "$pid" 2>/dev/null || { echo "$name (PID $pid) exited; see $DIR/$name.log" >&2; return 1; }
    # The header comes from stdin, so the token is never on a command line.
    printf 'Authorization: Bearer %s\n' "$(cat "$TOKEN")" | curl -sf -H @- "$url" >/dev/null && return 0
    sleep 1
  done
  echo "$name not up at $url after $START_TIMEOUT_S s; see $DIR/$name.log (a busy machine: raise" \
    "CORRHASH_START_TIMEOUT_S)" >&2
  return 1
}

case "${1:-}" in
  start)
    for name in ray mlflow mlflow/mlflow postgres/postgres; do
      if alive "$name"; then
        echo "refusing to start: $DIR/$name.pid names a live process ($(cat "$DIR/$name.pid")); run '$0 stop' first" >&2
        exit 1
      fi
    done
    for port in "$RAY_PORT" "$DASHBOARD_PORT" "$MLFLOW_PORT" "$RAY_CLIENT_PORT" "$DASHBOARD_AGENT_PORT"; do
      if port_taken "$port"; then
        echo "refusing to start: port $port is taken (another cluster?); set RAY_PORT, DASHBOARD_PORT, MLFLOW_PORT," \
          "RAY_CLIENT_PORT or DASHBOARD_AGENT_PORT to free ports" >&2
        exit 1
      fi
    done
    chmod 700 "$DIR"
    # The team setup's server needs the [team] extra; checked before anything starts (its absence used to show
    # only in mlflow.log, after PostgreSQL had started).
    if [ "$POSTGRES" = 1 ] && ! missing=$("$VENV_BIN/python" -c 'import psycopg2, flask_wtf' 2>&1); then
      echo "refusing to start --postgres: ${missing##*$'\n'}; install the team extra first:" \
        "$VENV_BIN/pip install -e '.[team]'" >&2
      exit 1
    fi
    if [ "$POSTGRES" = 1 ] && ! start_team_mlflow; then
      stop
      exit 1
    fi
    rm -f "$TOKEN"  # a fresh token per cluster: a stopped cluster's token opens nothing new
    (umask 077 && python -c 'import secrets; print(secrets.token_hex(32), end="")' > "$TOKEN")
    # This cluster stops whole: draining its one node (up to 30 s by default, and after a Ray Train run the drain
    # does not finish here) would only delay `stop`; the jobs end either way.
    RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}" \
    setsid ray start --head --block --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
      --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --ray-client-server-port="$RAY_CLIENT_PORT" \
      --dashboard-agent-listen-port="$DASHBOARD_AGENT_PORT" --disable-usage-stats \
      > "$DIR/ray.log" 2>&1 & echo $! > "$DIR/ray.pid"
    if [ "$POSTGRES" = 0 ]; then
      setsid mlflow server --backend-store-uri "sqlite:///$DIR/mlflow.db" \
        --artifacts-destination "$DIR/mlartifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
        > "$DIR/mlflow.log" 2>&1 & echo $! > "$DIR/mlflow.pid"
    fi
    # With --postgres, serve.sh has waited for its MLflow already.
    if ! wait_up "http://127.0.0.1:$DASHBOARD_PORT/api/version" "$(cat "$DIR/ray.pid")" ray ||
       { [ "$POSTGRES" = 0 ] &&
         ! wait_up "http://127.0.0.1:$MLFLOW_PORT/health" "$(cat "$DIR/mlflow.pid")" mlflow; }; then
      stop
      exit 1
    fi
    mlflow_uri=http://127.0.0.1:$MLFLOW_PORT
    credentials=
    if [ "$POSTGRES" = 1 ]; then
      echo "MLflow: $mlflow_uri on PostgreSQL 127.0.0.1:$(cat "$DIR/postgres/port"), basic auth: user admin," \
        "initial password in $ADMIN_PASSWORD (0600); jobs on this Ray log as admin"
      # The shell reads the password from its file: the command line shows where it is, not what it is.
      credentials=" MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=\"\$(cat $ADMIN_PASSWORD)\""
    fi
    # ?workflowType=machine_learning: MLflow 3's UI otherwise opens on its GenAI overview, whose sidebar has no
    # model registry (it ignores the experiments' kind tag while its workflow toggle is on).
    echo "Ray dashboard: http://127.0.0.1:$DASHBOARD_PORT (token in $TOKEN)" \
      "  MLflow UI: $mlflow_uri/#/experiments?workflowType=machine_learning"
    # The three commands the README's "On a Ray cluster" recipe runs next (tests/test_security.py runs them).
    echo "export PATH=$VENV_BIN:\$PATH RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT RAY_AUTH_MODE=token" \
      "RAY_AUTH_TOKEN_PATH=$TOKEN MLFLOW_TRACKING_URI=$mlflow_uri$credentials"
    # `ray job submit` does not forward the submitting shell's environment, and the job runs in a copy
    # of the working dir: pass the tracking URI explicitly and give absolute paths. The copy has no .git, so
    # the commit (with -dirty for uncommitted changes) is read when the line runs and passed in for the runs'
    # source tags (platform/corrhash/tracking/lineage.py).
    commit='$(git describe --always --dirty --abbrev=40 --exclude="*" 2>/dev/null)'
    runtime_env="{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"$mlflow_uri\", \"CORRHASH_GIT_COMMIT\": \"'$commit'\"}}"
    echo "ray job submit --working-dir . --runtime-env-json '$runtime_env'" \
      "-- python jobs/train.py --data \"\$PWD/data/20ng-18828\" --storage \"\$PWD/runs/ray\" --num-workers 2 --name ng64"
    echo "ray job submit --working-dir . --runtime-env-json '$runtime_env'" \
      "-- python jobs/tune.py --data \"\$PWD/data/20ng-18828\" --storage \"\$PWD/runs/tune\" --num-samples 8 --name ng64-tune"
    ;;
  stop) stop ;;
esac
