#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on 127.0.0.1 for the tests: own port and data folder.
#   source .ci/postgres.sh   -> starts it, exports FEEDBACK_TEST_PG_URL, stops it at shell exit
# Installs Debian's postgresql package when no server is found. Prints one line on failure and
# leaves FEEDBACK_TEST_PG_URL unset, so the PostgreSQL tests skip with a message.
pg_port="${FEEDBACK_TEST_PG_PORT:-55432}"

_pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

_pg_start() {
  local bindir data as_user=()
  bindir=$(_pg_bindir) || true
  if [ -z "$bindir" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
      >/dev/null 2>&1 || true
    bindir=$(_pg_bindir) || true
  fi
  if [ -z "$bindir" ]; then
    echo "PostgreSQL not found and not installable; PostgreSQL tests will skip" >&2
    return 0
  fi
  data=$(mktemp -d /tmp/feedback-pg.XXXXXX)
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$data"
    as_user=(runuser -u postgres --)
  fi
  "${as_user[@]}" "$bindir/initdb" -D "$data/db" -U feedback --auth=trust -E UTF8 >"$data/initdb.log" 2>&1 \
    || { echo "initdb failed (see $data/initdb.log); PostgreSQL tests will skip" >&2; return 0; }
  "${as_user[@]}" "$bindir/pg_ctl" -D "$data/db" -l "$data/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $pg_port -k $data -c fsync=off -c max_connections=200" start >/dev/null \
    || { echo "PostgreSQL did not start (see $data/server.log); PostgreSQL tests will skip" >&2; return 0; }
  FEEDBACK_PG_DATA="$data"
  FEEDBACK_PG_BINDIR="$bindir"
  export FEEDBACK_TEST_PG_URL="postgresql+psycopg://feedback@127.0.0.1:$pg_port/postgres"
  trap _pg_stop EXIT
}

_pg_stop() {
  [ -n "${FEEDBACK_PG_DATA:-}" ] || return 0
  local as_user=()
  if [ "$(id -u)" -eq 0 ]; then as_user=(runuser -u postgres --); fi
  "${as_user[@]}" "$FEEDBACK_PG_BINDIR/pg_ctl" -D "$FEEDBACK_PG_DATA/db" -m immediate stop >/dev/null 2>&1
  rm -rf "$FEEDBACK_PG_DATA"
}

_pg_start
