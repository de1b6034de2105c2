#!/usr/bin/env bash
# One entry point for every pneumosite process (Docker image, docker-compose.yml and
# tests/test_native_stack.py):
#
#   entrypoint.sh web       migrate, register the shipped model, then gunicorn
#   entrypoint.sh worker    Celery worker for the "inference" queue
#   entrypoint.sh trainer   Celery worker for the "training" queue (one task at a time)
#   entrypoint.sh beat      Celery beat (periodic tasks)
#   entrypoint.sh migrate   apply migrations and register the shipped model, then exit
#   entrypoint.sh manage ARGS...   python manage.py ARGS...
#   anything else is executed as given (e.g. `bash`).
#
# PYTHON picks the interpreter (default: python on PATH, i.e. the image's venv).
set -euo pipefail
cd "$(dirname "$0")/.."

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-pneumosite.settings}"
PY="${PYTHON:-python}"

prepare_database() {
  "$PY" manage.py migrate --noinput
  "$PY" manage.py ensure_model  # registers the shipped models/ (idempotent)
}

role="${1:-web}"
[[ $# -gt 0 ]] && shift

case "$role" in
  web)
    if [[ "${PNEUMOSITE_MIGRATE_ON_START:-1}" == "1" ]]; then
      prepare_database
    fi
    exec "$PY" -m gunicorn --config gunicorn.conf.py "$@"
    ;;
  worker)
    exec "$PY" -m celery -A pneumosite worker -Q inference \
      --concurrency "${CELERY_CONCURRENCY:-2}" \
      --max-tasks-per-child "${CELERY_MAX_TASKS_PER_CHILD:-200}" \
      -n "${CELERY_WORKER_NAME:-inference@%h}" --loglevel "${CELERY_LOG_LEVEL:-INFO}" "$@"
    ;;
  trainer)
    exec "$PY" -m celery -A pneumosite worker -Q training \
      --concurrency 1 --max-tasks-per-child 1 \
      -n "${CELERY_WORKER_NAME:-training@%h}" --loglevel "${CELERY_LOG_LEVEL:-INFO}" "$@"
    ;;
  beat)
    exec "$PY" -m celery -A pneumosite beat --loglevel "${CELERY_LOG_LEVEL:-INFO}" "$@"
    ;;
  migrate)
    prepare_database
    ;;
  manage)
    exec "$PY" manage.py "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
