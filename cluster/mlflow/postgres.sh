#!/usr/bin/env bash
# A private PostgreSQL for the MLflow tracking server: to try the team setup on one machine, and for the tests.
# A team with a managed database (RDS, Cloud SQL, ...) skips this and points serve.sh at it.
#   bash cluster/mlflow/postgres.sh start   # initdb once, start, create role + databases; prints the settings
#   bash cluster/mlflow/postgres.sh settings  # prints them again
#   bash cluster/mlflow/postgres.sh bindir    # where the PostgreSQL binaries are, or why none were found
#   bash cluster/mlflow/postgres.sh account   # the account the server runs as (created if root and absent)
#   bash cluster/mlflow/postgres.sh stop    # fast shutdown by PID
# State in ${CORRHASH_PG_DIR:-.cluster/postgres}:
#   data/            the initdb data dir (owned by the server's account, 0700); its Unix socket lives there too
#   pgpass           libpq password file for the `mlflow` role, 0600: clients set PGPASSFILE to it
#   admin.pgpass     the same for the bootstrap superuser `corrhash_admin`, 0600
#   postgres.pid, postgres.log, port
# Listens on 127.0.0.1 only (port ${CORRHASH_PG_PORT:-a free one, chosen at initdb}); every TCP and socket
# login needs a scram-sha-256 password. PostgreSQL refuses to run as root: started by root, the server runs
# as the system account ${CORRHASH_PG_USER:-corrhash-pg} (created if absent); otherwise as the caller.
# Binaries: $PG_BIN, else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin, else PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=$(realpath -m "${CORRHASH_PG_DIR:-.cluster/postgres}")
DATA=$DIR/data
cd /  # the server's account may not be able to enter the caller's working directory
# "${AS_SERVER[@]}" CMD...: runs CMD as the account that owns the data dir (PostgreSQL refuses root). setpriv
# execs, leaving no parent behind, so a started server's PID is PostgreSQL's own.
PG_USER=${CORRHASH_PG_USER:-corrhash-pg}
AS_SERVER=()
[ "$(id -u)" != 0 ] || AS_SERVER=(setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups --)
ROLE=mlflow ADMIN=corrhash_admin

pg_bin() {
  local dir
  for dir in "${PG_BIN:-}" "$(pg_config --bindir 2>/dev/null || true)" \
             $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) "$(dirname "$(command -v initdb || echo .)")"; do
    [ -n "$dir" ] || continue
    if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/psql" ] && [ -x "$dir/pg_isready" ]; then
      echo "$dir"; return 0
    fi
  done
  echo "PostgreSQL not found: no initdb, postgres, psql and pg_isready in \$PG_BIN, \`pg_config --bindir\`," \
    "/usr/lib/postgresql/*/bin or PATH (Debian: apt-get install postgresql)" >&2
  return 1
}

# The system account PostgreSQL runs as when started by root.
ensure_account() {
  id -u "$PG_USER" > /dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_USER"
}

alive() { [ -f "$DIR/postgres.pid" ] && kill -0 "$(cat "$DIR/postgres.pid")" 2>/dev/null; }

new_secret() { python3 -c 'import secrets; print(secrets.token_hex(24), end="")'; }

# write_private FILE: stdin to FILE, mode 0600 from the start, replaced atomically.
write_private() {
  local tmp
  tmp=$(umask 077 && mktemp "$1.XXXXXX")
  cat > "$tmp"
  mv -f "$tmp" "$1"
}

init_cluster() {
  local port=$1 pwfile
  rm -rf "$DATA"
  mkdir -m 700 "$DATA"
  pwfile=$(umask 077 && mktemp "$DIR/initdb-pw.XXXXXX")
  new_secret > "$pwfile"
  [ "$(id -u)" = 0 ] && chown "$PG_USER:" "$DATA" "$pwfile"
  # The superuser's password reaches initdb through a file, never argv; no login without a password.
  "${AS_SERVER[@]}" "$BIN/initdb" -D "$DATA" -U "$ADMIN" --pwfile="$pwfile" --auth-local=scram-sha-256 \
    --auth-host=scram-sha-256 --encoding=UTF8 --no-locale > "$DIR/initdb.log" 2>&1 ||
    { rm -f "$pwfile"; echo "initdb failed; see $DIR/initdb.log" >&2; return 1; }
  printf '127.0.0.1:%s:*:%s:%s\n' "$port" "$ADMIN" "$(cat "$pwfile")" | write_private "$DIR/admin.pgpass"
  rm -f "$pwfile"
  # Loopback TCP only; the socket in the private data dir, not the world-writable /tmp or /var/run.
  "${AS_SERVER[@]}" tee -a "$DATA/postgresql.conf" > /dev/null <<EOF
# corrhash (cluster/mlflow/postgres.sh)
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$DATA'
unix_socket_permissions = 0700
password_encryption = scram-sha-256
max_connections = 200
EOF
  echo "$port" > "$DIR/port"
}

create_role_and_databases() {
  local port=$1 password
  password=$(new_secret)
  # SQL through stdin: the new password is on no command line.
  PGPASSFILE=$DIR/admin.pgpass "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$ADMIN" \
    -d postgres -f - > /dev/null <<EOF
CREATE ROLE $ROLE LOGIN PASSWORD '$password';
CREATE DATABASE $ROLE OWNER $ROLE;
CREATE DATABASE ${ROLE}_auth OWNER $ROLE;
EOF
  printf '127.0.0.1:%s:*:%s:%s\n' "$port" "$ROLE" "$password" | write_private "$DIR/pgpass"
}

wait_ready() {
  local port=$1 pid=$2
  for _ in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || { echo "postgres (PID $pid) exited; see $DIR/postgres.log" >&2; return 1; }
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" && return 0
    sleep 0.5
  done
  echo "postgres not accepting connections on 127.0.0.1:$port after 30 s; see $DIR/postgres.log" >&2
  return 1
}

# The settings for serve.sh, as shell assignments; no password in them (libpq reads PGPASSFILE).
settings() {
  local port
  port=$(cat "$DIR/port")
  printf 'CORRHASH_MLFLOW_DB_URI=%q\n' "postgresql+psycopg2://$ROLE@127.0.0.1:$port/$ROLE"
  printf 'CORRHASH_MLFLOW_AUTH_DB_URI=%q\n' "postgresql+psycopg2://$ROLE@127.0.0.1:$port/${ROLE}_auth"
  printf 'PGPASSFILE=%q\n' "$DIR/pgpass"
}

stop() {
  [ -f "$DIR/postgres.pid" ] || return 0
  local pid
  pid=$(cat "$DIR/postgres.pid")
  kill -INT "$pid" 2>/dev/null || true  # SIGINT is PostgreSQL's fast shutdown: clients are disconnected
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true  # then anything left in its session (setsid: pgid = pid)
  rm -f "$DIR/postgres.pid"
}

case "${1:-}" in
  start)
    if alive; then
      echo "refusing to start: $DIR/postgres.pid names a live process ($(cat "$DIR/postgres.pid"));" \
        "run '$0 stop' first" >&2
      exit 1
    fi
    BIN=$(pg_bin)
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    if [ "$(id -u)" = 0 ]; then
      ensure_account
      # The server's account may pass through our folder to its data dir, not list or read it.
      chgrp "$PG_USER" "$DIR" && chmod 710 "$DIR"
      if ! "${AS_SERVER[@]}" test -x "$DIR"; then
        echo "PostgreSQL runs as '$PG_USER' (it refuses root), who cannot reach $DIR: every folder above it must" \
          "be searchable (o+x or group $PG_USER); set CORRHASH_PG_DIR to such a folder" >&2
        exit 1
      fi
    fi
    fresh=0
    if [ ! -f "$DATA/PG_VERSION" ] || [ ! -f "$DIR/pgpass" ]; then
      port=${CORRHASH_PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')}
      init_cluster "$port"
      fresh=1
    fi
    port=$(cat "$DIR/port")
    # setsid execs too (the background job is no group leader): $! is the postmaster, leading its own session.
    setsid "${AS_SERVER[@]}" "$BIN/postgres" -D "$DATA" > "$DIR/postgres.log" 2>&1 &
    echo $! > "$DIR/postgres.pid"
    if ! wait_ready "$port" "$(cat "$DIR/postgres.pid")"; then stop; exit 1; fi
    if [ "$fresh" = 1 ] && ! create_role_and_databases "$port"; then stop; exit 1; fi
    settings
    ;;
  settings)
    [ -f "$DIR/port" ] && [ -f "$DIR/pgpass" ] || { echo "no database in $DIR; run '$0 start'" >&2; exit 1; }
    settings
    ;;
  bindir) pg_bin ;;
  account)  # root: creates the account if absent and prints its name (to open a parent folder to it)
    [ "$(id -u)" = 0 ] || { id -un; exit 0; }
    ensure_account
    echo "$PG_USER"
    ;;
  stop) stop ;;
  *) echo "usage: $0 start|settings|bindir|account|stop" >&2; exit 2 ;;
esac
