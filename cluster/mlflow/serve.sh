#!/usr/bin/env bash
# The team's MLflow tracking server: runs and registry on PostgreSQL, artifacts proxied (workers on any node
# upload through the server, as mlflow-artifacts:/ URIs), every request behind MLflow's basic-auth app.
#   bash cluster/mlflow/serve.sh start    # needs CORRHASH_MLFLOW_DB_URI and the admin's initial password
#   bash cluster/mlflow/serve.sh stop     # by PID
# Settings (environment):
#   CORRHASH_MLFLOW_DB_URI         postgresql+psycopg2://USER@HOST:PORT/DB, no password in it (argv is public): libpq
#                                  reads it from PGPASSFILE (default ~/.pgpass), a 0600 file
#   CORRHASH_MLFLOW_AUTH_DB_URI    users and permissions (default: CORRHASH_MLFLOW_DB_URI)
#   CORRHASH_MLFLOW_ARTIFACTS      where uploaded artifacts land: s3://..., gs://..., or a folder
#                                  (default $CORRHASH_MLFLOW_DIR/mlartifacts)
#   CORRHASH_MLFLOW_HOST, _PORT    listen address (default 127.0.0.1:5000); _WORKERS (default 4)
#   CORRHASH_MLFLOW_ALLOWED_HOSTS  Host headers to accept when clients use a name or a non-loopback address
#   CORRHASH_MLFLOW_ADMIN_USERNAME (default admin) and its initial password: CORRHASH_MLFLOW_ADMIN_PASSWORD, or
#   CORRHASH_MLFLOW_ADMIN_PASSWORD_FILE (mode 0600 or 0400). Used only while the admin does not exist yet.
#   CORRHASH_MLFLOW_DEFAULT_PERMISSION  on others' experiments and models (default READ)
#   CORRHASH_MLFLOW_AUTH_CACHE_S   seconds a worker trusts a verified password (default 60; see the template)
#   MLFLOW_FLASK_SERVER_SECRET_KEY      CSRF key, the same for every server replica (default: generated once)
# State (rendered basic_auth.ini, generated CSRF key, PID, log) in ${CORRHASH_MLFLOW_DIR:-.cluster/mlflow}, 0700.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
DIR=$(realpath -m "${CORRHASH_MLFLOW_DIR:-.cluster/mlflow}")
MLFLOW=${MLFLOW:-$REPO/.venv/bin/mlflow}
PYTHON=$(dirname "$MLFLOW")/python
HOST=${CORRHASH_MLFLOW_HOST:-127.0.0.1} PORT=${CORRHASH_MLFLOW_PORT:-5000}

fail() { echo "cluster/mlflow/serve.sh: $*" >&2; exit 1; }
alive() { [ -f "$DIR/mlflow.pid" ] && kill -0 "$(cat "$DIR/mlflow.pid")" 2>/dev/null; }

# A secret file must be its owner's alone: anyone else who can read it can log in.
read_secret_file() {
  local file=$1 mode
  [ -f "$file" ] || fail "$2: $file is not a file"
  mode=$(stat -c %a "$file")
  if (( 8#$mode & 8#077 )); then
    fail "$2: $file has mode $mode, readable by others; run: chmod 600 $file"
  fi
  cat "$file"
}

admin_password() {
  if [ -n "${CORRHASH_MLFLOW_ADMIN_PASSWORD_FILE:-}" ]; then
    read_secret_file "$CORRHASH_MLFLOW_ADMIN_PASSWORD_FILE" CORRHASH_MLFLOW_ADMIN_PASSWORD_FILE
  else
    printf '%s' "${CORRHASH_MLFLOW_ADMIN_PASSWORD:-}"
  fi
}

# write_private FILE: stdin to FILE, mode 0600 from the start, replaced atomically.
write_private() {
  local tmp
  tmp=$(umask 077 && mktemp "$1.XXXXXX")
  cat > "$tmp"
  mv -f "$tmp" "$1"
}

render_auth_config() {
  # Values go in through the environment of a Python process, never through sed patterns or argv.
  DEFAULT_PERMISSION=${CORRHASH_MLFLOW_DEFAULT_PERMISSION:-READ} AUTH_DB_URI=$1 \
  ADMIN_USERNAME=${CORRHASH_MLFLOW_ADMIN_USERNAME:-admin} AUTH_CACHE_S=${CORRHASH_MLFLOW_AUTH_CACHE_S:-60} \
  "$PYTHON" -c '
import os, string, sys
template = string.Template(open(sys.argv[1]).read())
sys.stdout.write(template.substitute(
    default_permission=os.environ["DEFAULT_PERMISSION"], auth_database_uri=os.environ["AUTH_DB_URI"],
    admin_username=os.environ["ADMIN_USERNAME"], auth_cache_ttl_seconds=int(os.environ["AUTH_CACHE_S"])))
' "$REPO/cluster/mlflow/basic_auth.ini.template" | write_private "$DIR/basic_auth.ini"
}

stop() {
  [ -f "$DIR/mlflow.pid" ] || return 0
  local pid
  pid=$(cat "$DIR/mlflow.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || true  # then its workers, if any are left (setsid: pgid = pid)
  for _ in $(seq 20); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
  rm -f "$DIR/mlflow.pid"
}

wait_up() {
  local pid=$1
  for _ in $(seq "${CORRHASH_START_TIMEOUT_S:-120}"); do
    kill -0 "$pid" 2>/dev/null || { echo "mlflow (PID $pid) exited; see $DIR/mlflow.log" >&2; return 1; }
    # /health is the one route the auth app leaves open.
    curl -sf "http://$HOST:$PORT/health" > /dev/null && return 0
    sleep 1
  done
  echo "mlflow not up at http://$HOST:$PORT after ${CORRHASH_START_TIMEOUT_S:-120} s; see $DIR/mlflow.log (a busy" \
    "machine: raise CORRHASH_START_TIMEOUT_S)" >&2
  return 1
}

case "${1:-}" in
  start)
    ! alive || fail "refusing to start: $DIR/mlflow.pid names a live process ($(cat "$DIR/mlflow.pid"));" \
      "run '$0 stop' first"
    db=${CORRHASH_MLFLOW_DB_URI:-}
    auth_db=${CORRHASH_MLFLOW_AUTH_DB_URI:-$db}
    [ -n "$db" ] ||
      fail "set CORRHASH_MLFLOW_DB_URI (postgresql+psycopg2://USER@HOST:PORT/DB; cluster/mlflow/postgres.sh prints one)"
    for uri in "$db" "$auth_db"; do
      if [[ $uri =~ ://[^/@]*:[^/@]*@ ]]; then
        fail "CORRHASH_MLFLOW_DB_URI and CORRHASH_MLFLOW_AUTH_DB_URI must not hold a password (every local user" \
          "sees the server's command line): put it in a 0600 PGPASSFILE"
      fi
    done
    if [ -n "${PGPASSFILE:-}" ]; then read_secret_file "$PGPASSFILE" PGPASSFILE > /dev/null; fi
    password=$(admin_password)
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    render_auth_config "$auth_db"
    if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
      [ -s "$DIR/flask_secret_key" ] || "$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' |
        write_private "$DIR/flask_secret_key"
      MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$DIR/flask_secret_key")
    fi
    artifacts=${CORRHASH_MLFLOW_ARTIFACTS:-$DIR/mlartifacts}
    allowed=()
    [ -z "${CORRHASH_MLFLOW_ALLOWED_HOSTS:-}" ] || allowed=(--allowed-hosts "$CORRHASH_MLFLOW_ALLOWED_HOSTS")
    # uvicorn restarts a worker that does not answer its health check in 5 s; a worker importing MLflow on a
    # busy host takes longer, and would be killed and restarted in a loop.
    # Secrets reach the server through its environment (readable only by its user and root), never argv.
    # An empty MLFLOW_AUTH_ADMIN_PASSWORD is ignored once the admin exists; before, MLflow refuses to start.
    # No huey job runner (~10 idle consumers of ~230 MB each) unless asked for: corrhash submits no server jobs.
    MLFLOW_AUTH_CONFIG_PATH=$DIR/basic_auth.ini MLFLOW_AUTH_ADMIN_PASSWORD=$password \
    MLFLOW_FLASK_SERVER_SECRET_KEY=$MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_DISABLE_TELEMETRY=true \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
      setsid "$MLFLOW" server --app-name basic-auth --backend-store-uri "$db" --serve-artifacts \
      --artifacts-destination "$artifacts" --host "$HOST" --port "$PORT" \
      --workers "${CORRHASH_MLFLOW_WORKERS:-4}" "${allowed[@]}" \
      --uvicorn-opts "--timeout-worker-healthcheck 60" > "$DIR/mlflow.log" 2>&1 &
    echo $! > "$DIR/mlflow.pid"
    if ! wait_up "$(cat "$DIR/mlflow.pid")"; then stop; exit 1; fi
    echo "MLFLOW_TRACKING_URI=http://$HOST:$PORT"
    ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
