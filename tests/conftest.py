"""Shared pytest fixtures for pneumosite.

Services
    require_service(name, reachable, reason)   skip, or fail when PNEUMOSITE_REQUIRE_SERVICES=1
    redis_url, postgres_url                    URLs of reachable services (session fixtures)

Celery
    filesystem_broker, redis_broker            BrokerConfig for an isolated broker per test
    celery_app_broker                          point the in-process Celery app at a broker
    celery_worker_factory                      start real worker processes on the test DB

With PNEUMOSITE_REQUIRE_SERVICES=1 (CI) every skipped test is reported as a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from pneumosite.brokers import FILESYSTEM_BROKER_URL, filesystem_broker_options

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRE_SERVICES = os.environ.get("PNEUMOSITE_REQUIRE_SERVICES", "") == "1"


# --------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------
def require_service(name: str, reachable: bool, reason: str = "") -> None:
    """Skip the current test when a service is not reachable.

    With PNEUMOSITE_REQUIRE_SERVICES=1 (set by .ci/run) the test fails instead.
    """
    if reachable:
        return
    message = f"{name} is not available" + (f": {reason}" if reason else "")
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (PNEUMOSITE_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped while PNEUMOSITE_REQUIRE_SERVICES=1: {reason}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """REDIS_URL, verified to answer PING."""
    url = os.environ.get("REDIS_URL", "").strip()
    if not url:
        require_service("Redis", False, "REDIS_URL is not set")
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        require_service("Redis", False, f"{_redact(url)} does not answer PING: {exc}")
    return url


POSTGRES_SCHEMES = ("postgres://", "postgresql://", "pgsql://")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """DATABASE_URL when it is a reachable PostgreSQL server (the suite then runs on it)."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url.startswith(POSTGRES_SCHEMES):
        require_service("PostgreSQL", False, "DATABASE_URL is not a postgres:// URL")
    try:
        import psycopg2

        psycopg2.connect(_libpq_url(url), connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        require_service("PostgreSQL", False, f"cannot connect to {_redact(url)}: {exc}")
    return url


def _libpq_url(url: str) -> str:
    """libpq understands postgres:// and postgresql:// but not dj-database-url's pgsql://."""
    return "postgresql://" + url.split("://", 1)[1] if url.startswith("pgsql://") else url


# --------------------------------------------------------------------------------------
# Test database
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def django_db_modify_db_settings(request, django_db_modify_db_settings_parallel_suffix):
    """Give each pytest run its own test database.

    Several engineers (and CI) may run the suite at once from the same tree and
    var/ directory; a per-run suffix keeps their test databases apart. Skipped with
    --reuse-db so that the database can actually be reused.
    """
    from django.conf import settings

    if request.config.getoption("reuse_db", False):
        return
    suffix = f"run{os.getpid()}"
    for db in settings.DATABASES.values():
        test = db.setdefault("TEST", {})
        if db["ENGINE"] == "django.db.backends.sqlite3":
            name = test.get("NAME")
            if name and name != ":memory:" and "mode=memory" not in str(name):
                path = Path(name)
                test["NAME"] = str(path.with_name(f"{path.stem}_{suffix}{path.suffix}"))
        else:
            test["NAME"] = f"{test.get('NAME') or 'test_' + str(db['NAME'])}_{suffix}"


def current_database_url() -> str:
    """A DATABASE_URL for the database the test process is connected to right now.

    Inside a test with database access this is the TEST database, which lets another
    process (a Celery worker, manage.py, gunicorn) share it.
    """
    from django.db import connection

    settings_dict = connection.settings_dict
    name = str(settings_dict["NAME"])
    if settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        if name == ":memory:" or "mode=memory" in name:
            raise RuntimeError("an in-memory SQLite database cannot be shared with a process")
        return "sqlite:///" + str(Path(name).resolve())
    original = os.environ.get("DATABASE_URL", "")
    if not original:
        raise RuntimeError("non-SQLite database without DATABASE_URL")
    # Keep scheme, credentials, host and options; swap the database name.
    return urlsplit(original)._replace(path="/" + quote(name)).geturl()


# --------------------------------------------------------------------------------------
# Celery brokers
# --------------------------------------------------------------------------------------
@dataclass
class BrokerConfig:
    """How to reach one broker, for the test process and for worker subprocesses."""

    url: str
    transport_options: dict = field(default_factory=dict)
    result_backend: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # env for worker subprocesses


@pytest.fixture
def filesystem_broker(tmp_path) -> BrokerConfig:
    """A private embedded filesystem broker (folders under tmp_path) for one test."""
    base = tmp_path / "broker"
    return BrokerConfig(
        url=FILESYSTEM_BROKER_URL,
        transport_options=filesystem_broker_options(base),
        result_backend=None,
        env={
            "CELERY_BROKER_URL": "",
            "REDIS_URL": "",
            "CELERY_RESULT_BACKEND": "",
            "PNEUMOSITE_BROKER_DIR": str(base),
            "PNEUMOSITE_BROKER_KEY_PREFIX": "",
        },
    )


@pytest.fixture
def redis_broker(redis_url) -> Iterator[BrokerConfig]:
    """The Redis at REDIS_URL, isolated per test by a unique key prefix (removed after)."""
    from django.conf import settings

    prefix = f"pneumotest-{uuid.uuid4().hex[:12]}:"
    yield BrokerConfig(
        url=redis_url,
        transport_options={
            "global_keyprefix": prefix,
            "visibility_timeout": settings.PNEUMOSITE_TRAINING_TIME_LIMIT + 3600,
        },
        result_backend=redis_url,
        env={
            "CELERY_BROKER_URL": redis_url,
            "REDIS_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "PNEUMOSITE_BROKER_KEY_PREFIX": prefix,
        },
    )
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _reset_celery_connections(app) -> None:
    pool = app._pool
    app._pool = None
    if pool is not None:
        pool.force_close_all()
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


@contextlib.contextmanager
def celery_app_using(broker: BrokerConfig):
    """Point pneumosite's Celery app (in this process) at `broker` for the block."""
    from pneumosite.celery import app

    keys = ("broker_url", "broker_transport_options", "result_backend", "task_ignore_result")
    saved = {key: app.conf.get(key) for key in keys}
    app.conf.update(
        broker_url=broker.url,
        broker_transport_options=dict(broker.transport_options),
        result_backend=broker.result_backend,
        result_backend_transport_options=(
            {"global_keyprefix": broker.transport_options["global_keyprefix"]}
            if "global_keyprefix" in broker.transport_options
            else {}
        ),
        task_ignore_result=broker.result_backend is None,
    )
    _reset_celery_connections(app)
    try:
        yield app
    finally:
        _reset_celery_connections(app)
        app.conf.update(saved)


@pytest.fixture
def celery_app_broker():
    """Returns configure(broker) -> app; the previous broker is restored at teardown."""
    with contextlib.ExitStack() as stack:

        def configure(broker: BrokerConfig):
            return stack.enter_context(celery_app_using(broker))

        yield configure


# --------------------------------------------------------------------------------------
# Celery worker processes
# --------------------------------------------------------------------------------------
class WorkerHandle:
    """A real `celery worker` subprocess (its own process group)."""

    def __init__(self, *, name, args, env, log_path: Path, ready_timeout: float):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()/kill()
        self.process = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(ready_timeout)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        marker = f"{self.name}@"
        while time.monotonic() < deadline:
            text = self.log_text()
            if any(marker in line and "ready." in line for line in text.splitlines()):
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"celery worker exited with {self.process.returncode} before ready:\n{text}"
                )
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"celery worker not ready after {timeout}s:\n{self.log_text()}")

    def wait_for_log(self, needle: str, timeout: float = 30) -> str:
        """Wait until `needle` appears in the worker log; returns the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if needle in text:
                return text
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not in worker log after {timeout}s:\n{self.log_text()}")

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 20) -> int | None:
        """Warm shutdown (SIGTERM); SIGKILL after `timeout` seconds."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(10)
        # Reap pool children that may outlive the main process.
        self._signal_group(signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        return self.process.returncode

    def kill(self) -> int | None:
        """SIGKILL the worker and its pool children at once (simulates a crash)."""
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if not self._log.closed:
            self._log.flush()
        return self.process.returncode


@pytest.fixture
def celery_worker_factory(transactional_db, tmp_path, celery_app_broker):
    """Start real Celery workers that share this test's database.

    factory(broker, queues=("inference", "training"), *, extra_env=None,
            concurrency=1, ready_timeout=60, loglevel="INFO", extra_args=()) -> WorkerHandle

    The in-process Celery app is pointed at the same broker, so `task.delay()` in the
    test reaches the worker. Workers are stopped at teardown. Requesting this fixture
    makes the test use a transactional database (data must be committed to be seen by
    the worker).
    """
    from django.conf import settings

    workers: list[WorkerHandle] = []
    database_url = current_database_url()

    def factory(
        broker: BrokerConfig,
        queues=("inference", "training"),
        *,
        extra_env: dict[str, str] | None = None,
        concurrency: int = 1,
        ready_timeout: float = 60,
        loglevel: str = "INFO",
        extra_args=(),
    ) -> WorkerHandle:
        celery_app_broker(broker)
        name = f"pytest-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "pneumosite.settings",
                "DATABASE_URL": database_url,
                "DJANGO_SECRET_KEY": settings.SECRET_KEY,
                "PNEUMOSITE_VAR_DIR": str(settings.VAR_DIR),
                "PYTHONUNBUFFERED": "1",
                # Off unless a test asks for it: most tests never read a film.
                "PNEUMOSITE_WARM_WORKER": "0",
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
                ),
            }
        )
        env.update(broker.env)
        env.update(extra_env or {})
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pneumosite",
            "worker",
            "-Q",
            ",".join(queues),
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "-n",
            f"{name}@%h",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            loglevel,
            *extra_args,
        ]
        worker = WorkerHandle(
            name=name,
            args=args,
            env=env,
            log_path=tmp_path / f"{name}.log",
            ready_timeout=ready_timeout,
        )
        workers.append(worker)
        return worker

    yield factory
    for worker in workers:
        worker.stop()


def wait_for(predicate, timeout: float = 30, interval: float = 0.1, message: str = ""):
    """Poll `predicate` until it returns a truthy value; returns it or fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(message or f"condition not met within {timeout}s")
