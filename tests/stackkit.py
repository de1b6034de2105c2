"""Run the app's process roles (scripts/entrypoint.sh web|worker|...) as test subprocesses.

Used by tests/test_deployment.py and tests/test_native_stack.py: the commands are the
ones docker-compose.yml runs, from the same script.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = REPO_ROOT / "scripts" / "entrypoint.sh"

# Variables that change settings; dropped so that the processes see only what we set.
_CONFIG_PREFIXES = ("DJANGO_", "PNEUMOSITE_", "CELERY_", "AWS_", "GUNICORN_")
_CONFIG_NAMES = {"DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY", "PORT"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def production_env(var_dir: Path, **overrides: str) -> dict[str, str]:
    """A production-like environment (DEBUG off, JSON logs) for entrypoint.sh roles."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _CONFIG_NAMES and not key.startswith(_CONFIG_PREFIXES)
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "pneumosite.settings",
            "DJANGO_ENV": "production",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
            "PNEUMOSITE_VAR_DIR": str(var_dir),
            "PYTHON": sys.executable,
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    env.update(overrides)
    return env


def collectstatic(env: dict[str, str]) -> None:
    """As the image build does: collect static files with the role's environment."""
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), "manage", "collectstatic", "--noinput"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def copy_model_dir(model_dir: Path, models_root: Path) -> Path:
    """A models/ folder holding one model (as the image ships it)."""
    models_root.mkdir(parents=True, exist_ok=True)
    target = models_root / model_dir.name
    target.mkdir()
    for name in ("model.json", "model.keras", "metrics.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, target / name)
    return models_root


class RoleProcess:
    """`scripts/entrypoint.sh ROLE` in its own process group, output to a log file."""

    def __init__(self, role: str, env: dict[str, str], log_path: Path, *args: str):
        self.role = role
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["bash", str(ENTRYPOINT), role, *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return
            if not self.alive():
                raise AssertionError(
                    f"{self.role} exited with {self.process.returncode}:\n{self.log_text()}"
                )
            time.sleep(0.2)
        raise AssertionError(
            f"{needle!r} not in {self.role} log after {timeout}s:\n{self.log_text()}"
        )

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (graceful: gunicorn and Celery finish their work), then SIGKILL."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        returncode = self.process.poll()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # leftovers (pool children)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if not self._log.closed:
            self._log.close()
        return returncode


def http_request(
    port: int,
    method: str,
    path: str,
    *,
    host: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes, list[str]]:
    """One plain-HTTP request to 127.0.0.1:port; returns status, headers, body, cookies."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        cookies = response.msg.get_all("Set-Cookie") or []
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data, cookies
    finally:
        conn.close()


def wait_http(proc: RoleProcess, port: int, host: str, timeout: float = 120) -> None:
    """Wait until the web role answers /healthz at all (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"web exited with {proc.process.returncode}:\n{proc.log_text()}")
        try:
            http_request(port, "GET", "/healthz", host=host, timeout=10)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"web not answering after {timeout}s:\n{proc.log_text()}")
