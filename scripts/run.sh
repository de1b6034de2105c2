#!/usr/bin/env bash
# Local run: migrate, register the shipped model, ensure an admin account, then run
# the Django dev server and a Celery worker (and beat, if a schedule is configured)
# until Ctrl-C. Called by `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-pneumosite.settings}"
PY="${PY:-.venv/bin/python}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
CELERY_CONCURRENCY="${CELERY_CONCURRENCY:-2}"

"$PY" manage.py migrate --noinput

"$PY" manage.py ensure_model
# The embedded broker keeps every consumed message in processed/; drop those over a day old.
find "${PNEUMOSITE_BROKER_DIR:-${PNEUMOSITE_VAR_DIR:-var}/broker}/processed" -type f -mtime +1 \
  -delete 2>/dev/null || true

"$PY" scripts/ensure_admin.py

read -r beat_enabled debug_on < <("$PY" -c 'import django; django.setup()
from django.conf import settings
print(int(bool(getattr(settings, "CELERY_BEAT_SCHEDULE", None))), int(settings.DEBUG))')
if [[ "$debug_on" != "1" ]]; then
  # DEBUG off: runserver does not serve static files; WhiteNoise needs collectstatic.
  "$PY" manage.py collectstatic --noinput >/dev/null
fi

# Each child gets its own process group (job control) so that stopping it also stops
# its children (runserver's autoreloader, Celery's prefork pool).
set -m
pids=()

group_alive() {
  local pid
  for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done
  return 1
}

wait_groups() {  # wait up to $1 tenths of a second for all process groups to exit
  local i
  for ((i = 0; i < $1; i++)); do group_alive || return 0; sleep 0.1; done
  return 1
}

cleanup() {
  trap - INT TERM EXIT
  set +e
  echo
  echo "Stopping..."
  # 1) SIGTERM to each leader: Celery does a warm shutdown (finishes running tasks).
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  # 2) then to whole groups (runserver's reloader child, pool processes), 3) then SIGKILL.
  wait_groups "${STOP_TIMEOUT_TENTHS:-150}" \
    || { for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done; wait_groups 50; } \
    || for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
  wait 2>/dev/null
  echo "Stopped."
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

"$PY" manage.py runserver "$HOST:$PORT" &
pids+=("$!")
"$PY" -m celery -A pneumosite worker -Q inference,training \
  --concurrency "$CELERY_CONCURRENCY" --loglevel INFO &
pids+=("$!")
if [[ "$beat_enabled" == "1" ]]; then
  "$PY" -m celery -A pneumosite beat --loglevel INFO &
  pids+=("$!")
fi

echo
echo "pneumosite is running at http://$HOST:$PORT/  (Ctrl-C stops the server and the worker)"
echo

# Returns when any child exits (or on Ctrl-C via the traps); then stop the others.
status=0
wait -n || status=$?
echo "A process exited with status $status; stopping the others." >&2
exit "$status"
