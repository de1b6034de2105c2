"""Deployment: Dockerfile, docker-compose.yml, entrypoint roles, gunicorn, /healthz.

No Docker engine is needed: the compose file is validated by the docker-compose client
when one is installed (.ci/run installs it), its structure is checked here, and the
web role (scripts/entrypoint.sh web -> gunicorn.conf.py) is run for real.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from fixtures.casedata import find_model_dir
from stackkit import (
    RoleProcess,
    copy_model_dir,
    free_port,
    http_request,
    production_env,
    wait_http,
)

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
# Fixtures: active_model, var_dir (fixtures/casekit.py), s3_server (s3server.py).
pytest_plugins = ["fixtures.casekit", "s3server"]

APP_ROLES = {"web": "web", "worker": "worker", "trainer": "trainer", "beat": "beat"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# --------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------
def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def run_compose(*args: str, env_file: Path | None) -> subprocess.CompletedProcess:
    command = compose_command()
    if command is None:
        pytest.skip("no docker-compose client (apt-get install docker-compose)")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
    options = ["--env-file", str(env_file)] if env_file else []
    return subprocess.run(
        [*command, *options, "-f", str(COMPOSE_FILE), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_config_is_valid_with_env_example(tmp_path):
    proc = run_compose("config", "-q", env_file=ENV_EXAMPLE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The normalised config keeps what matters (interpolated from .env.example).
    proc = run_compose("config", env_file=ENV_EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    web_env = config["services"]["web"]["environment"]
    values = env_example()
    assert web_env["DJANGO_SECRET_KEY"] == values["DJANGO_SECRET_KEY"]
    assert web_env["DATABASE_URL"].startswith(
        f"postgres://{values['POSTGRES_USER']}:{values['POSTGRES_PASSWORD']}@db:5432/"
    )
    assert web_env["REDIS_URL"] == f"redis://:{values['REDIS_PASSWORD']}@redis:6379/0"
    # Root credentials of the data services are not handed to the app containers.
    assert not {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "REDIS_PASSWORD"} & set(web_env)


def test_compose_config_refuses_missing_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = run_compose("config", "-q", env_file=empty)
    assert proc.returncode != 0
    assert "set in .env" in proc.stdout + proc.stderr


def test_compose_services_and_dependencies():
    services = compose()["services"]
    assert set(services) == {
        "db",
        "redis",
        "minio",
        "minio-init",
        "web",
        "worker",
        "trainer",
        "beat",
    }
    assert re.fullmatch(r"postgres:16(\.\d+)?(-[a-z]+)?", services["db"]["image"])
    assert re.fullmatch(r"redis:7(\.\d+)*(-[a-z]+)?", services["redis"]["image"])
    assert services["minio"]["image"].startswith("minio/minio:")
    assert services["minio-init"]["image"].startswith("minio/mc:")
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert "ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "ready" in services["minio"]["healthcheck"]["test"]
    # Named volumes for the data services.
    volumes = set(compose()["volumes"])
    for name in ("db", "redis", "minio"):
        mounts = [str(v).split(":")[0] for v in services[name]["volumes"]]
        assert set(mounts) & volumes, name

    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(init["command"])
    assert "mc mb --ignore-existing" in script and "anonymous set none" in script

    for name, role in APP_ROLES.items():
        service = services[name]
        assert service["build"]["context"] == "."
        assert service["command"] == [role]
        deps = service["depends_on"]
        assert deps["db"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
        env = service["environment"]
        assert env["DJANGO_ENV"] == "production"
        assert env["AWS_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert "@db:5432/" in env["DATABASE_URL"] and "@redis:6379/" in env["REDIS_URL"]

    web = services["web"]
    assert web["ports"] == ["${WEB_PORT:-8000}:8000"]
    assert web["healthcheck"]["test"] == ["CMD", "python", "/app/scripts/healthcheck.py"]
    assert "inference@" in " ".join(services["worker"]["healthcheck"]["test"])
    assert "training@" in " ".join(services["trainer"]["healthcheck"]["test"])


def test_every_compose_variable_is_in_env_example():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    optional = set(re.findall(r"\$\{([A-Z0-9_]+):-", COMPOSE_FILE.read_text()))
    documented = set(env_example())
    missing = used - optional - documented
    assert not missing, f"used in docker-compose.yml, not in .env.example: {sorted(missing)}"
    assert len(env_example()["DJANGO_SECRET_KEY"]) >= 50


def test_entrypoint_roles_match_compose_commands():
    """Every role compose runs is a case of scripts/entrypoint.sh, with its queue."""
    script = (REPO_ROOT / "scripts" / "entrypoint.sh").read_text()
    cases = dict(re.findall(r"^  ([a-z]+)\)\n(.*?);;", script, flags=re.S | re.M))
    assert set(APP_ROLES.values()) | {"migrate", "manage"} <= set(cases)
    assert "-Q inference" in cases["worker"] and "CELERY_CONCURRENCY:-2" in cases["worker"]
    assert "-Q training" in cases["trainer"] and "--concurrency 1" in cases["trainer"]
    assert "gunicorn --config gunicorn.conf.py" in cases["web"]
    assert "celery -A pneumosite beat" in cases["beat"]
    proc = subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / "entrypoint.sh")])
    assert proc.returncode == 0


# --------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# --------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_is_multistage_slim_nonroot_with_healthcheck():
    instructions = dockerfile_instructions()
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    runtime = instructions[last_from:]
    runtime_text = "\n".join(f"{kw} {rest}" for kw, rest in runtime)
    # The runtime stage takes the venv from the builder and installs no requirements.
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime_text
    assert "pip install" not in runtime_text
    users = [rest for kw, rest in runtime if kw == "USER"]
    assert users and users[-1] not in {"root", "0"}
    # collectstatic runs as that user, with a throwaway secret.
    run_lines = [rest for kw, rest in runtime if kw == "RUN"]
    collect = next(line for line in run_lines if "collectstatic" in line)
    assert "DJANGO_SECRET_KEY=" in collect
    assert runtime.index(("USER", users[-1])) < runtime.index(("RUN", collect))
    healthcheck = next(rest for kw, rest in runtime if kw == "HEALTHCHECK")
    assert "/app/scripts/healthcheck.py" in healthcheck
    assert ("ENTRYPOINT", '["/app/scripts/entrypoint.sh"]') in runtime
    assert ("CMD", '["web"]') in runtime
    assert "DJANGO_ENV=production" in runtime_text


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also excludes children."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        candidates = prefixes if not pattern.startswith("**/") else parts + prefixes
        glob = pattern[3:] if pattern.startswith("**/") else pattern
        if any(fnmatch.fnmatchcase(candidate, glob) for candidate in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_runtime_files_and_drops_the_rest():
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    kept = [
        "requirements.txt",
        "manage.py",
        "gunicorn.conf.py",
        "pneumosite/settings.py",
        "diagnoses/models.py",
        "mlcore/__init__.py",
        "templates/base.html",
        "scripts/entrypoint.sh",
        "scripts/healthcheck.py",
        "models/v1/model.keras",
        "models/v1/model.json",
    ]
    dropped = [
        ".git/HEAD",
        ".venv/bin/python",
        "var/db.sqlite3",
        "var/media/cases/x.jpeg",
        ".env",
        "tests/test_deployment.py",
        "diagnoses/__pycache__/models.cpython-311.pyc",
        ".pytest_cache/v/cache",
        "data/chest_xray/train/x.jpeg",
    ]
    assert [p for p in kept if _dockerignored(p, patterns)] == []
    assert [p for p in dropped if not _dockerignored(p, patterns)] == []


# --------------------------------------------------------------------------------------
# gunicorn.conf.py
# --------------------------------------------------------------------------------------
def _gunicorn_settings(env: dict[str, str]) -> dict:
    code = (
        "import json\n"
        "from gunicorn.config import Config\n"
        "c = Config(); c.set('config', 'gunicorn.conf.py')\n"
        "from gunicorn.app.base import Application\n"
        "ns = {}\n"
        "exec(compile(open('gunicorn.conf.py').read(), 'gunicorn.conf.py', 'exec'), ns)\n"
        "for k, v in ns.items():\n"
        "    if k in c.settings: c.set(k, v)\n"
        "print(json.dumps({k: c.settings[k].get() for k in ('bind', 'workers', 'threads',"
        " 'worker_class', 'timeout', 'graceful_timeout', 'max_requests',"
        " 'max_requests_jitter', 'wsgi_app', 'accesslog', 'control_socket_disable')},"
        " default=str))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_gunicorn_config_for_two_cores(tmp_path):
    s = _gunicorn_settings(production_env(tmp_path / "var"))
    assert s["wsgi_app"] == "pneumosite.wsgi:application"
    assert s["worker_class"] == "gthread"
    assert (s["workers"], s["threads"]) == (2, 4)
    assert s["timeout"] == 60 and 0 < s["graceful_timeout"] <= s["timeout"]
    assert s["max_requests"] > 0 and 0 < s["max_requests_jitter"] < s["max_requests"]
    assert s["bind"] == ["0.0.0.0:8000"]
    assert s["accesslog"] == "-"
    s = _gunicorn_settings(
        production_env(tmp_path / "var", PORT="9001", WEB_CONCURRENCY="3", GUNICORN_THREADS="2")
    )
    assert (s["bind"], s["workers"], s["threads"]) == (["0.0.0.0:9001"], 3, 2)


# --------------------------------------------------------------------------------------
# The roles, run for real (SQLite, filesystem broker and media: no services needed)
# --------------------------------------------------------------------------------------
def _run_entrypoint(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "entrypoint.sh"), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_migrate_role_prepares_a_fresh_database_and_check_deploy_passes(tmp_path):
    models = tmp_path / "models"
    copy_model_dir(find_model_dir(), models)
    env = production_env(
        tmp_path / "var",
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.sqlite3'}",
        DJANGO_ALLOWED_HOSTS="xray.example.org",
        PNEUMOSITE_MODELS_DIR=str(models),
    )
    proc = _run_entrypoint(env, "migrate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Applying diagnoses.0001_initial... OK" in proc.stdout
    assert "Activated model version" in proc.stdout
    # Idempotent: a second start (every web start runs it) changes nothing.
    proc = _run_entrypoint(env, "migrate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No migrations to apply" in proc.stdout
    assert "Model versions up to date" in proc.stdout

    proc = _run_entrypoint(env, "manage", "check", "--deploy", "--fail-level", "WARNING")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues" in proc.stdout


@pytest.mark.slow
def test_web_role_serves_over_gunicorn_with_healthz_static_and_https_redirect(tmp_path):
    """entrypoint.sh web: migrate, ensure_model, gunicorn; production settings."""
    models = tmp_path / "models"
    copy_model_dir(find_model_dir(), models)
    port = free_port()
    host = "xray.example.org"
    var = tmp_path / "var"
    env = production_env(
        var,
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.sqlite3'}",
        DJANGO_ALLOWED_HOSTS=host,
        PNEUMOSITE_MODELS_DIR=str(models),
        GUNICORN_BIND=f"127.0.0.1:{port}",
    )
    # As the image build does.
    collect = _run_entrypoint(env, "manage", "collectstatic", "--noinput")
    assert collect.returncode == 0, collect.stderr
    web = RoleProcess("web", env, tmp_path / "web.log")
    try:
        wait_http(web, port, host)
        # /healthz over plain HTTP is not redirected (SECURE_REDIRECT_EXEMPT) and needs no
        # login; every check passes when a model is shipped.
        status, headers, body, _ = http_request(port, "GET", "/healthz", host=host)
        data = json.loads(body)
        assert headers["content-type"] == "application/json"
        assert {k: data[k] for k in ("database", "broker", "storage")} == dict.fromkeys(
            ("database", "broker", "storage"), "ok"
        )
        assert (status, data["status"], data["model"]) == (200, "ok", "ok")
        assert "no-cache" in headers["cache-control"]

        # The container healthcheck script agrees (exit 0 only on 200).
        check = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "healthcheck.py")],
            env={**env, "PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == (0 if status == 200 else 1), check.stdout + check.stderr

        # Everything else is redirected to HTTPS on plain HTTP...
        status, headers, _, _ = http_request(port, "GET", "/", host=host)
        assert (status, headers["location"]) == (301, f"https://{host}/")
        # ...and behind the TLS proxy anonymous users go to the login page.
        https = {"X-Forwarded-Proto": "https"}
        status, headers, _, _ = http_request(port, "GET", "/", host=host, headers=https)
        assert status == 302 and headers["location"].startswith("/accounts/login/")
        assert "max-age=31536000" in headers["strict-transport-security"]
        status, _, body, _ = http_request(port, "GET", "/accounts/login/", host=host, headers=https)
        assert status == 200
        # Static files from WhiteNoise, hashed names from the manifest, cached for long.
        css = re.search(rb'href="(/static/[^"]+\.[0-9a-f]{12}\.css)"', body)
        assert css, body[:2000]
        status, headers, _, _ = http_request(
            port, "GET", css.group(1).decode(), host=host, headers=https
        )
        assert status == 200 and "immutable" in headers["cache-control"]
        # Unknown hosts are refused.
        status, _, _, _ = http_request(port, "GET", "/healthz", host="evil.example.com")
        assert status == 400

        # Logs are JSON lines (gunicorn's and the app's).
        time.sleep(0.5)
        log = web.log_text()
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        loggers = {entry["logger"] for entry in lines}
        assert {"gunicorn.error", "gunicorn.access"} <= loggers, log
        assert any("GET /healthz" in entry["message"] for entry in lines)
        assert any(entry["logger"] == "django.security.DisallowedHost" for entry in lines), log
        assert web.alive()
    finally:
        returncode = web.stop()
    assert returncode == 0, web.log_text()


# --------------------------------------------------------------------------------------
# /healthz in-process: each check fails on its own
# --------------------------------------------------------------------------------------
def _healthz(client) -> tuple[int, dict]:
    response = client.get("/healthz")
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json()


@pytest.mark.django_db
def test_healthz_ok_with_active_model_and_anonymous(client, active_model):
    status, data = _healthz(client)  # anonymous, although LoginRequiredMiddleware is on
    assert (status, data) == (
        200,
        {"status": "ok", "database": "ok", "broker": "ok", "storage": "ok", "model": "ok"},
    )


@pytest.mark.django_db
def test_healthz_fails_without_model_or_model_file(client, var_dir, active_model):
    from django.core.files.storage import default_storage

    default_storage.delete(active_model.model_file.name)
    status, data = _healthz(client)
    assert (status, data["status"], data["model"]) == (503, "fail", "fail")
    assert data["database"] == data["storage"] == "ok"

    active_model.is_active = False
    active_model.save(update_fields=["is_active"])
    status, data = _healthz(client)
    assert (status, data["status"], data["model"]) == (503, "fail", "missing")


@pytest.mark.django_db
def test_healthz_fails_fast_when_broker_is_down(client, active_model, caplog):
    from conftest import BrokerConfig, celery_app_using

    port = free_port()  # nothing listens there
    with celery_app_using(BrokerConfig(url=f"redis://127.0.0.1:{port}/0")):
        started = time.monotonic()
        status, data = _healthz(client)
        elapsed = time.monotonic() - started
    assert (status, data["status"], data["broker"]) == (503, "fail", "fail")
    assert data["database"] == data["storage"] == data["model"] == "ok"
    assert elapsed < 10
    # The reason is logged, not sent to the anonymous client.
    assert "health check broker failed" in caplog.text
    assert str(port) not in json.dumps(data)


@pytest.mark.django_db
def test_healthz_fails_when_storage_is_unusable(client, settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "missing-media")},
        },
    }
    status, data = _healthz(client)
    assert (status, data["storage"]) == (503, "fail")
    assert data["database"] == data["broker"] == "ok"


@pytest.mark.django_db
def test_healthz_checks_the_s3_bucket(client, settings, tmp_path, s3_server):
    from test_foundation import clean_env, dump_settings

    env = clean_env(tmp_path / "var", **s3_server.env("pneumo-healthz-absent"))
    settings.STORAGES = {**settings.STORAGES, "default": dump_settings(env)["STORAGES"]["default"]}
    status, data = _healthz(client)
    assert (status, data["storage"]) == (503, "fail")  # the bucket does not exist
    s3_server.client().create_bucket(Bucket="pneumo-healthz-absent")
    try:
        assert _healthz(client)[1]["storage"] == "ok"
    finally:
        s3_server.client().delete_bucket(Bucket="pneumo-healthz-absent")


def test_healthz_is_only_get():
    from django.test import Client

    assert Client().post("/healthz").status_code == 405
