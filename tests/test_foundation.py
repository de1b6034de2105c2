"""Foundation: settings from the environment, databases, Celery workers, deploy checks."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import REPO_ROOT, current_database_url, wait_for

# Variables that change settings; removed so that subprocesses see the defaults.
_CONFIG_PREFIXES = ("DJANGO_", "PNEUMOSITE_", "CELERY_", "AWS_")
_CONFIG_NAMES = {"DATABASE_URL", "REDIS_URL"}


def clean_env(var_dir: Path, **overrides: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _CONFIG_NAMES and not key.startswith(_CONFIG_PREFIXES)
    }
    env["PNEUMOSITE_VAR_DIR"] = str(var_dir)
    env["DJANGO_SETTINGS_MODULE"] = "pneumosite.settings"
    env.update(overrides)
    return env


_DUMP_SETTINGS = r"""
import json
from django.conf import settings
from pneumosite.celery import app

db = settings.DATABASES["default"]
print(json.dumps({
    "DEBUG": settings.DEBUG,
    "SECRET_KEY": settings.SECRET_KEY,
    "VAR_DIR": str(settings.VAR_DIR),
    "ALLOWED_HOSTS": settings.ALLOWED_HOSTS,
    "CSRF_TRUSTED_ORIGINS": settings.CSRF_TRUSTED_ORIGINS,
    "db": {k: db.get(k) for k in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT",
                                  "CONN_MAX_AGE", "CONN_HEALTH_CHECKS", "TEST")},
    "MEDIA_ROOT": str(settings.MEDIA_ROOT),
    "STATIC_ROOT": str(settings.STATIC_ROOT),
    "STORAGES": settings.STORAGES,
    "broker_url": app.conf.broker_url,
    "broker_transport_options": app.conf.broker_transport_options,
    "result_backend": app.conf.result_backend,
    "task_always_eager": app.conf.task_always_eager,
    "SECURE_SSL_REDIRECT": getattr(settings, "SECURE_SSL_REDIRECT", False),
    "SECURE_HSTS_SECONDS": getattr(settings, "SECURE_HSTS_SECONDS", 0),
    "SESSION_COOKIE_SECURE": settings.SESSION_COOKIE_SECURE,
    "SESSION_COOKIE_AGE": settings.SESSION_COOKIE_AGE,
    "CSRF_COOKIE_SECURE": settings.CSRF_COOKIE_SECURE,
    "SECURE_PROXY_SSL_HEADER": settings.SECURE_PROXY_SSL_HEADER,
    "X_FRAME_OPTIONS": settings.X_FRAME_OPTIONS,
    "LOG_FORMATTER": settings.LOGGING["handlers"]["stdout"]["formatter"],
    "PNEUMOSITE_DATA_DIR": str(settings.PNEUMOSITE_DATA_DIR),
    "PNEUMOSITE_MODELS_DIR": str(settings.PNEUMOSITE_MODELS_DIR),
    "PNEUMOSITE_MAX_UPLOAD_BYTES": settings.PNEUMOSITE_MAX_UPLOAD_BYTES,
    "PNEUMOSITE_MAX_PIXELS": settings.PNEUMOSITE_MAX_PIXELS,
    "training_time_limit": settings.PNEUMOSITE_TRAINING_TIME_LIMIT,
}, default=str))
"""


def python(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run this venv's Python in the repository with `env`, output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dump_settings(env: dict[str, str]) -> dict:
    proc = python(env, "-c", "import django; django.setup()\n" + _DUMP_SETTINGS, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return python(env, "manage.py", *args, timeout=timeout)


def production_env(var_dir: Path, **overrides: str) -> dict[str, str]:
    return clean_env(
        var_dir,
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        DJANGO_ALLOWED_HOSTS="example.org",
        **overrides,
    )


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------
def test_defaults_use_sqlite_and_filesystem_broker_under_var(tmp_path):
    var = tmp_path / "var"
    s = dump_settings(clean_env(var))
    assert s["DEBUG"] is True
    assert s["db"]["ENGINE"] == "django.db.backends.sqlite3"
    assert s["db"]["NAME"] == str(var / "db.sqlite3")
    assert s["db"]["TEST"]["NAME"] == str(var / "test_db.sqlite3")
    assert s["MEDIA_ROOT"] == str(var / "media")
    assert s["STATIC_ROOT"] == str(var / "static")
    assert s["STORAGES"]["default"]["BACKEND"].endswith("FileSystemStorage")
    assert s["broker_url"].startswith("filesystem://")
    assert s["task_always_eager"] is False
    opts = s["broker_transport_options"]
    assert opts["data_folder_in"] == opts["data_folder_out"] == str(var / "broker" / "in")
    assert opts["processed_folder"] == str(var / "broker" / "processed")
    for sub in ("in", "processed"):
        assert (var / "broker" / sub).is_dir()
    assert s["result_backend"] is None
    assert s["LOG_FORMATTER"] == "console"
    assert s["PNEUMOSITE_DATA_DIR"] == str(REPO_ROOT.parent / "shared" / "data" / "chest_xray")
    assert s["PNEUMOSITE_MODELS_DIR"] == str(REPO_ROOT / "models")
    assert s["PNEUMOSITE_MAX_UPLOAD_BYTES"] == 25 * 1024 * 1024
    assert s["PNEUMOSITE_MAX_PIXELS"] == 50_000_000
    assert s["SESSION_COOKIE_AGE"] == 12 * 3600  # a working day, not two weeks


def test_session_length_comes_from_the_environment(tmp_path):
    env = clean_env(tmp_path / "var", PNEUMOSITE_SESSION_SECONDS="600")
    assert dump_settings(env)["SESSION_COOKIE_AGE"] == 600


def test_secret_key_is_generated_once_per_var_dir(tmp_path):
    var = tmp_path / "var"
    first = dump_settings(clean_env(var))["SECRET_KEY"]
    assert len(first) >= 50
    assert (var / "secret_key").read_text().strip() == first
    assert (var / "secret_key").stat().st_mode & 0o077 == 0
    assert dump_settings(clean_env(var))["SECRET_KEY"] == first
    assert dump_settings(clean_env(var, DJANGO_SECRET_KEY="x" * 60))["SECRET_KEY"] == "x" * 60


def test_database_url_and_redis_url_are_parsed(tmp_path):
    s = dump_settings(
        clean_env(
            tmp_path / "var",
            DATABASE_URL="postgres://pneu:p%40ss@db.internal:5433/pneumo",
            REDIS_URL="redis://cache.internal:6380/2",
            DJANGO_ALLOWED_HOSTS="a.example, b.example",
            DJANGO_CSRF_TRUSTED_ORIGINS="https://a.example,https://b.example",
        )
    )
    db = s["db"]
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"]) == ("pneumo", "pneu", "p@ss")
    assert (db["HOST"], int(db["PORT"])) == ("db.internal", 5433)
    assert db["CONN_MAX_AGE"] > 0 and db["CONN_HEALTH_CHECKS"] is True
    assert s["broker_url"] == "redis://cache.internal:6380/2"
    assert s["result_backend"] == "redis://cache.internal:6380/2"
    assert s["broker_transport_options"]["visibility_timeout"] > s["training_time_limit"]
    assert s["ALLOWED_HOSTS"] == ["a.example", "b.example"]
    assert s["CSRF_TRUSTED_ORIGINS"] == ["https://a.example", "https://b.example"]

    s = dump_settings(
        clean_env(
            tmp_path / "var",
            REDIS_URL="redis://ignored:6379/0",
            CELERY_BROKER_URL="redis://broker.internal:6379/5",
        )
    )
    assert s["broker_url"] == "redis://broker.internal:6379/5"


def test_s3_storage_when_bucket_is_set(tmp_path):
    s = dump_settings(
        clean_env(
            tmp_path / "var",
            AWS_STORAGE_BUCKET_NAME="xrays",
            AWS_S3_ENDPOINT_URL="http://127.0.0.1:9000",
            AWS_S3_REGION_NAME="eu-west-1",
            AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
            AWS_SECRET_ACCESS_KEY="secret",
        )
    )
    default = s["STORAGES"]["default"]
    assert default["BACKEND"] == "storages.backends.s3.S3Storage"
    assert default["OPTIONS"] == {
        "bucket_name": "xrays",
        "default_acl": "private",
        "querystring_auth": True,
        "querystring_expire": 300,
        "file_overwrite": False,
        "signature_version": "s3v4",
        "addressing_style": "path",
        "endpoint_url": "http://127.0.0.1:9000",
        "region_name": "eu-west-1",
        "access_key": "AKIAEXAMPLE",
        "secret_key": "secret",
    }


def test_production_settings_are_secure(tmp_path):
    s = dump_settings(production_env(tmp_path / "var"))
    assert s["DEBUG"] is False
    assert s["SECURE_SSL_REDIRECT"] is True
    assert s["SECURE_HSTS_SECONDS"] >= 31_536_000
    assert s["SESSION_COOKIE_SECURE"] and s["CSRF_COOKIE_SECURE"]
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert s["X_FRAME_OPTIONS"] == "DENY"
    assert s["LOG_FORMATTER"] == "json"
    assert s["STORAGES"]["staticfiles"]["BACKEND"].startswith("whitenoise.")
    assert s["ALLOWED_HOSTS"] == ["example.org"]

    s = dump_settings(production_env(tmp_path / "var", DJANGO_SECURE_SSL_REDIRECT="0"))
    assert s["SECURE_SSL_REDIRECT"] is False

    s = dump_settings(clean_env(tmp_path / "var", DJANGO_ENV="production"))
    assert s["DEBUG"] is False


def test_check_deploy_reports_no_issues(tmp_path):
    proc = manage(production_env(tmp_path / "var"), "check", "--deploy", "--fail-level", "WARNING")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "WARNINGS" not in output and "?:" not in output, output
    assert "no issues" in output


def test_json_log_formatter():
    import logging

    from pneumosite.logging import JsonFormatter

    record = logging.makeLogRecord(
        {"name": "x", "levelname": "INFO", "msg": "hello %s", "args": ("world",), "case": 7}
    )
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "hello world" and data["case"] == 7 and data["level"] == "INFO"


# --------------------------------------------------------------------------------------
# Databases: migrate + check in a fresh database
# --------------------------------------------------------------------------------------
def test_migrate_and_check_on_fresh_sqlite_file(tmp_path):
    db_file = tmp_path / "fresh.sqlite3"
    env = clean_env(tmp_path / "var", DATABASE_URL=f"sqlite:///{db_file}")
    for args in (("migrate", "--noinput"), ("check",), ("migrate", "--check")):
        proc = manage(env, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert db_file.stat().st_size > 0
    assert not (tmp_path / "var" / "db.sqlite3").exists()


@pytest.mark.services
def test_migrate_and_check_on_fresh_postgres_database(tmp_path, postgres_url):
    import psycopg2
    from conftest import _libpq_url
    from psycopg2 import sql

    name = f"pneumo_throwaway_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(_libpq_url(postgres_url), connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        env = clean_env(tmp_path / "var", DATABASE_URL=_with_db_name(postgres_url, name))
        for args in (("migrate", "--noinput"), ("check", "--database", "default")):
            proc = manage(env, *args)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        check = psycopg2.connect(_libpq_url(_with_db_name(postgres_url, name)))
        with check, check.cursor() as cur:
            cur.execute("SELECT count(*) FROM django_migrations")
            assert cur.fetchone()[0] > 10
        check.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()


def _with_db_name(url: str, name: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url)._replace(path="/" + name).geturl()


@pytest.mark.django_db
def test_suite_runs_on_the_configured_database():
    from django.db import connection

    expected = os.environ.get("DATABASE_URL", "")
    if expected.startswith(("postgres://", "postgresql://", "pgsql://")):
        assert connection.vendor == "postgresql"
    elif not expected:
        assert connection.vendor == "sqlite"
        name = Path(connection.settings_dict["NAME"]).name
        assert name.startswith("test_db") and name.endswith(".sqlite3")
    assert current_database_url()


# --------------------------------------------------------------------------------------
# Celery: a real worker process executes diagnoses.tasks.ping
# --------------------------------------------------------------------------------------
def test_celery_configuration():
    from pneumosite.celery import app

    conf = app.conf
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_soft_time_limit and conf.task_time_limit > conf.task_soft_time_limit
    assert conf.broker_connection_retry_on_startup is True
    assert conf.task_always_eager is False
    assert {q.name for q in conf.task_queues} == {"inference", "training"}
    assert conf.task_default_queue == "inference"
    routes = conf.task_routes
    assert routes["diagnoses.tasks.run_prediction"]["queue"] == "inference"
    assert routes["diagnoses.tasks.run_retraining"]["queue"] == "training"
    assert "diagnoses.tasks.ping" in app.tasks


def _ping_through_worker(worker_factory, broker, tmp_path):
    from diagnoses.tasks import ping

    worker = worker_factory(broker)
    target = tmp_path / "pong.txt"
    ping.delay(str(target), text="pong-" + worker.name)
    wait_for(target.exists, timeout=30, message=f"ping not executed:\n{worker.log_text()}")
    assert target.read_text() == "pong-" + worker.name
    worker.wait_for_log("succeeded", timeout=10)
    assert worker.is_alive()
    worker.stop()
    assert not worker.is_alive()


@pytest.mark.worker
def test_worker_runs_ping_over_filesystem_broker(
    celery_worker_factory, filesystem_broker, tmp_path
):
    _ping_through_worker(celery_worker_factory, filesystem_broker, tmp_path)


@pytest.mark.worker
@pytest.mark.services
def test_worker_runs_ping_over_redis(celery_worker_factory, redis_broker, tmp_path):
    _ping_through_worker(celery_worker_factory, redis_broker, tmp_path)


@pytest.mark.django_db(transaction=True)
def test_test_database_is_shared_with_other_processes():
    """current_database_url() (given to workers) reaches this test's database."""
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user("shared-db-check", password="x-" + uuid.uuid4().hex)
    code = (
        "import django; django.setup()\n"
        "from django.contrib.auth import get_user_model\n"
        "print(get_user_model().objects.filter(username='shared-db-check').count())\n"
    )
    proc = python(dict(os.environ, DATABASE_URL=current_database_url()), "-c", code, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


# --------------------------------------------------------------------------------------
# Web
# --------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_login_page_renders(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'name="username"' in body and 'name="password"' in body
    assert "csrfmiddlewaretoken" in body


@pytest.mark.django_db
def test_home_redirects_anonymous_users_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert "next=/" in response["Location"]


@pytest.mark.django_db
def test_home_renders_for_logged_in_user(client, django_user_model):
    user = django_user_model.objects.create_user("alice", password="pw-" + uuid.uuid4().hex)
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 200
    assert b"Log out" in response.content


def test_production_refuses_the_env_example_secret_key(tmp_path):
    env = {
        **os.environ,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "change-me-to-a-long-random-string-of-at-least-fifty-characters",
        "DJANGO_ALLOWED_HOSTS": "example.org",
        "PNEUMOSITE_VAR_DIR": str(tmp_path),
    }
    result = manage(env, "check", timeout=120)
    assert result.returncode != 0 and "placeholder" in result.stderr
