#!/usr/bin/env bash
# Start (or stop) the real services the tests talk to: a private PostgreSQL 15 cluster on 127.0.0.1.
# Prints `export` lines for the test environment. ClickHouse is chdb (in-process), no service needed.
set -euo pipefail
cmd="${1:-start}"
PGBIN=/usr/lib/postgresql/15/bin
PGDATA="${BILLOW_PG_DIR:-/tmp/billow-test-pg}"
PGPORT="${BILLOW_PG_PORT:-55432}"

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "$cmd" in
  start)
    if [ ! -x "$PGBIN/initdb" ]; then
      echo "services: installing PostgreSQL 15 (Debian package)" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    fi
    if ! as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
      rm -rf "$PGDATA"
      mkdir -p "$PGDATA"
      [ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDATA"
      as_postgres "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >/dev/null
      as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
        -o "-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off" start >&2
    fi
    echo "export BILLOW_TEST_PG_URL=postgresql+pg8000://postgres@127.0.0.1:$PGPORT/postgres"
    ;;
  stop)
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop >&2 || true
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
