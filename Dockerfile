# syntax=docker/dockerfile:1
# pneumosite: one image for every process; the command picks the role
# (scripts/entrypoint.sh web | worker | trainer | beat | migrate). See docker-compose.yml.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: a virtual environment with the pinned requirements ---------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Every requirement ships manylinux wheels (psycopg2-binary included): no compiler needed.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
RUN pip install --upgrade pip \
 && pip install --only-binary=:all: -r /tmp/requirements.txt \
 && find /opt/venv -type d -name __pycache__ -prune -exec rm -rf {} +

# ---- runtime: the venv, the code and the shipped model; no build tools ----------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=pneumosite.settings \
    DJANGO_ENV=production \
    PNEUMOSITE_VAR_DIR=/var/lib/pneumosite \
    PNEUMOSITE_MODELS_DIR=/app/models \
    PNEUMOSITE_DATA_DIR=/data/chest_xray \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PORT=8000

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin app \
 && install -d -o app -g app -m 0750 /var/lib/pneumosite

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Code and models/ (the shipped model); .dockerignore keeps var/, data, tests, .git out.
COPY --chown=root:root . /app

USER app
# Static files are collected into the image (served by WhiteNoise). Build-only secret:
# the real one comes from the environment at run time.
RUN DJANGO_SECRET_KEY=collectstatic-build-only-not-a-real-secret-0123456789abcdefghij \
    python manage.py collectstatic --noinput \
 && rm -rf /var/lib/pneumosite/broker /var/lib/pneumosite/secret_key

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
  CMD ["python", "/app/scripts/healthcheck.py"]
ENTRYPOINT ["/app/scripts/entrypoint.sh"]
CMD ["web"]
