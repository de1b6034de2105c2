"""The docker-compose stack without Docker: the same roles, started natively.

gunicorn (`entrypoint.sh web`: migrate + ensure_model + gunicorn.conf.py), a Celery
inference worker (`entrypoint.sh worker`), the trainer and beat, on PostgreSQL and Redis
(DATABASE_URL / REDIS_URL; .ci/run starts both) with uploads and models on an S3 server
(moto's server mode on loopback, standing in for MinIO: see tests/s3server.py), in a
production-like environment (DEBUG off, JSON logs; HTTPS redirect and secure cookies off
for plain HTTP on loopback). Then, over HTTP like a browser: log in, upload a sample
X-ray through the upload form and wait for the worker's reading.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

import pytest
from conftest import current_database_url
from fixtures.casedata import NORMAL_SAMPLE, find_model_dir
from stackkit import (
    RoleProcess,
    collectstatic,
    copy_model_dir,
    free_port,
    http_request,
    production_env,
    wait_http,
)

# Fixtures s3_server, s3_bucket: a moto S3 server on loopback (tests/s3server.py).
pytest_plugins = ["s3server"]

pytestmark = [pytest.mark.services, pytest.mark.worker, pytest.mark.slow]


class Browser:
    """Just enough of a browser: a cookie jar, Host/Origin headers, forms with CSRF."""

    def __init__(self, port: int, host: str):
        self.port = port
        self.host = f"{host}:{port}"
        self.cookies: dict[str, str] = {}

    def request(self, method, path, *, body=None, headers=None):
        all_headers = dict(headers or {})
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if method == "POST":
            all_headers["Origin"] = f"http://{self.host}"
        status, response_headers, data, set_cookies = http_request(
            self.port, method, path, host=self.host, headers=all_headers, body=body
        )
        for header in set_cookies:
            cookie = SimpleCookie()
            cookie.load(header)
            for name, morsel in cookie.items():
                self.cookies[name] = morsel.value
        return status, response_headers, data

    def csrf_token(self, path: str) -> str:
        status, _, body = self.request("GET", path)
        assert status == 200, body[:500]
        match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body)
        assert match, body[:2000]
        return match.group(1).decode()

    def post_form(self, path: str, fields: dict[str, str], files=None):
        token = self.csrf_token(path)
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in {"csrfmiddlewaretoken": token, **fields}.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n".encode()
            )
        for name, (filename, content, content_type) in (files or {}).items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
                + content
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request(
            "POST",
            path,
            body=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )


@pytest.mark.django_db(transaction=True)
def test_stack_login_upload_and_reading(
    tmp_path, postgres_url, redis_url, s3_server, s3_bucket, django_user_model
):
    model = find_model_dir()
    password = uuid.uuid4().hex
    user = django_user_model.objects.create_user("stack-clinician", password=password)

    port = free_port()
    host = "localhost"
    prefix = f"pneumostack-{uuid.uuid4().hex[:8]}:"
    env = production_env(
        tmp_path / "var",
        DATABASE_URL=current_database_url(),  # the test database
        REDIS_URL=redis_url,
        PNEUMOSITE_BROKER_KEY_PREFIX=prefix,
        **s3_server.env(s3_bucket),
        PNEUMOSITE_MODELS_DIR=str(copy_model_dir(model, tmp_path / "models")),
        DJANGO_ALLOWED_HOSTS=host,
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_SECURE_COOKIES="0",
        DJANGO_SECURE_HSTS_SECONDS="0",
        GUNICORN_BIND=f"127.0.0.1:{port}",
        CELERY_CONCURRENCY="1",
    )
    name = uuid.uuid4().hex[:6]
    processes: list[RoleProcess] = []

    def start(role: str, **extra: str) -> RoleProcess:
        proc = RoleProcess(role, {**env, **extra}, tmp_path / f"{role}.log")
        processes.append(proc)
        return proc

    collectstatic(env)
    try:
        web = start("web")
        worker = start("worker", CELERY_WORKER_NAME=f"inference-{name}@%h")
        trainer = start("trainer", CELERY_WORKER_NAME=f"training-{name}@%h")
        beat = start("beat")
        wait_http(web, port, host, timeout=180)
        worker.wait_for_log(f"inference-{name}@", 120)
        worker.wait_for_log("ready.", 120)
        trainer.wait_for_log("ready.", 120)
        beat.wait_for_log("beat: Starting...", 60)
        assert "[queues]" in worker.log_text() and ".> inference" in worker.log_text()
        assert ".> training" not in worker.log_text()
        assert ".> training" in trainer.log_text()

        browser = Browser(port, host)
        # The web role registered the shipped model into S3; every check passes.
        status, _, body = browser.request("GET", "/healthz")
        assert status == 200, body
        assert json.loads(body)["status"] == "ok"
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
        assert any(k.startswith("models/") and k.endswith(".keras") for k in keys), keys

        # Log in through the login form.
        status, headers, body = browser.post_form(
            "/accounts/login/", {"username": user.username, "password": password}
        )
        assert status == 302, body[:2000]
        assert "sessionid" in browser.cookies

        # Upload a sample X-ray through the upload form.
        status, headers, body = browser.post_form(
            "/upload/",
            {"reference": "stack-test", "note": ""},
            files={"files": (NORMAL_SAMPLE.name, NORMAL_SAMPLE.read_bytes(), "image/jpeg")},
        )
        assert status == 302, body[:3000]
        match = re.fullmatch(r"/cases/(\d+)/", headers["location"])
        assert match, headers["location"]
        case_id = int(match.group(1))

        # The worker computes the reading; the case page's status endpoint reports it.
        deadline = time.monotonic() + 240
        data = {}
        while time.monotonic() < deadline:
            status, _, body = browser.request("GET", f"/cases/{case_id}/status.json")
            assert status == 200, body[:500]
            data = json.loads(body)
            if not data["pending"]:
                break
            time.sleep(1)
        assert data.get("status") == "done", f"{data}\n--- worker log ---\n{worker.log_text()}"
        reading = data["reading"]
        assert reading["label"] in {"normal", "pneumonia"}
        assert 0.0 <= reading["probability"] <= 1.0
        assert "succeeded" in worker.log_text()

        # Case images are in the private bucket; the site redirects to a signed URL.
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
        assert any(k.startswith("cases/original/") for k in keys), keys
        status, headers, _ = browser.request("GET", f"/cases/{case_id}/image/display/")
        assert status == 302
        signed = urlsplit(headers["location"])
        assert f"{signed.scheme}://{signed.netloc}" == s3_server.endpoint
        assert "X-Amz-Signature=" in signed.query and "X-Amz-Expires=300" in signed.query
        with urllib.request.urlopen(headers["location"], timeout=10) as response:
            assert response.read()[:3] == b"\xff\xd8\xff"  # a JPEG original's display is JPEG

        # Production logging: JSON lines from the web process and requests logged.
        web_lines = [json.loads(x) for x in web.log_text().splitlines() if x.startswith("{")]
        assert any("POST /upload/" in entry["message"] for entry in web_lines)
        for proc in (web, worker, trainer, beat):
            assert proc.alive(), proc.log_text()
    finally:
        codes = {proc.role: proc.stop() for proc in reversed(processes)}
    assert codes["web"] == 0 and codes["worker"] == 0, codes
