#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis servers on loopback, for CI, benchmarks and local tests.
#
#   scripts/throwaway_services.sh start DIR   # starts both, writes DIR/env.sh (exports)
#   source DIR/env.sh                         # DATABASE_URL, REDIS_URL
#   scripts/throwaway_services.sh stop DIR    # stops both and removes DIR
#
# Needs the Debian packages postgresql and redis-server (not started as system services)
# and root, since the PostgreSQL cluster is created as the user postgres.
set -euo pipefail
action=${1:?start or stop}
WORK=${2:?a working folder}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
pg_bin() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1; }

start() {
  mkdir -p "$WORK/pg"
  chmod 755 "$WORK"
  chown postgres:postgres "$WORK/pg"

  local redis_port pg_port password bin
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes --save '' \
    --appendonly no --dir "$WORK" --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log"
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.2
  done
  redis-cli -h 127.0.0.1 -p "$redis_port" ping | grep -q PONG

  bin=$(pg_bin)
  pg_port=$(free_port)
  password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  runuser -u postgres -- "$bin/initdb" -D "$WORK/pg/data" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  runuser -u postgres -- "$bin/pg_ctl" -D "$WORK/pg/data" -w -l "$WORK/pg/postgres.log" \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $WORK/pg -c fsync=off" start >/dev/null
  runuser -u postgres -- "$bin/psql" -h "$WORK/pg" -p "$pg_port" -U postgres -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE pneumosite LOGIN CREATEDB PASSWORD '$password'" \
    -c "CREATE DATABASE pneumosite OWNER pneumosite" >/dev/null

  cat > "$WORK/env.sh" <<ENV
export DATABASE_URL=postgres://pneumosite:$password@127.0.0.1:$pg_port/pneumosite
export REDIS_URL=redis://127.0.0.1:$redis_port/0
export THROWAWAY_REDIS_PORT=$redis_port
ENV
}

stop() {
  set +e
  if [[ -f "$WORK/env.sh" ]]; then
    # shellcheck disable=SC1091
    source "$WORK/env.sh"
    redis-cli -h 127.0.0.1 -p "$THROWAWAY_REDIS_PORT" shutdown nosave >/dev/null 2>&1
  fi
  if [[ -f "$WORK/pg/data/postmaster.pid" ]]; then
    runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null 2>&1
  fi
  rm -rf "$WORK"
}

"$action"
