"""End-to-end load benchmark: upload POST -> reading available, on the real stack.

    DATABASE_URL=postgres://... REDIS_URL=redis://... \\
        .venv/bin/python bench/load_e2e.py [--scenarios latency1,latency10,throughput]

Starts, like docker-compose (same scripts/entrypoint.sh roles, production settings):
gunicorn (`entrypoint.sh web`: migrate, ensure_model, gunicorn.conf.py) and ONE inference
worker (`entrypoint.sh worker`, --worker-concurrency processes, default 2 as deployed), on a
fresh database `<DATABASE_URL's name>_bench<pid>` (created and dropped here; the role needs
CREATEDB) and a private Redis key prefix, with local media storage in a temporary folder.
Clients are threads speaking plain HTTP like a browser (log in, CSRF, multipart upload).

Scenarios
  latency1    1 client, uploads one image, waits for its reading, repeats (--latency-n)
  latency10   10 such clients at once (--latency-n each)
  throughput  10 clients upload --throughput-n images in all as fast as the web answers;
              cases/s = uploads / (last reading - first POST)

"Reading available" = the prediction row is `done` (probability, label and heatmap are
written in one UPDATE); a monitor thread polls PostgreSQL every 10 ms, so the figures are
upload start -> first poll that sees it (at most ~10 ms late). Afterwards every scenario
checks: one case per upload reference, one prediction per case, all `done`, every heatmap
file present, no HTTP 5xx; the script exits 1 when anything is lost, duplicated or failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from stackkit import (  # noqa: E402
    ENTRYPOINT,
    RoleProcess,
    free_port,
    http_request,
    production_env,
    wait_http,
)

SAMPLES = sorted((REPO / "tests" / "fixtures" / "samples").glob("*/*.jpeg"))
HOST = "localhost"


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# --------------------------------------------------------------------------------------
# An HTTP client like a browser
# --------------------------------------------------------------------------------------
class Client:
    def __init__(self, port: int):
        self.port = port
        self.cookies: dict[str, str] = {}
        self.token = ""
        self.statuses: list[int] = []

    def request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if method == "POST":
            headers["Origin"] = f"http://{HOST}:{self.port}"
        status, response_headers, data, set_cookies = http_request(
            self.port, method, path, host=f"{HOST}:{self.port}", headers=headers, body=body,
            timeout=120,
        )  # fmt: skip
        self.statuses.append(status)
        for header in set_cookies:
            cookie = SimpleCookie()
            cookie.load(header)
            self.cookies.update({name: morsel.value for name, morsel in cookie.items()})
        return status, response_headers, data

    def csrf(self, path: str) -> str:
        status, _, body = self.request("GET", path)
        match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body)
        if status != 200 or not match:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return match.group(1).decode()

    def post_multipart(self, path: str, fields: dict, files: dict | None = None):
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        ]
        for name, (filename, content) in (files or {}).items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
                + content
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request(
            "POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )

    def login(self, username: str, password: str) -> None:
        token = self.csrf("/accounts/login/")
        status, _, body = self.post_multipart(
            "/accounts/login/",
            {"csrfmiddlewaretoken": token, "username": username, "password": password},
        )
        if status != 302:
            raise RuntimeError(f"login failed: {status} {body[:300]!r}")
        self.token = self.csrf("/upload/")

    def upload(self, image: Path, reference: str) -> int:
        status, headers, body = self.post_multipart(
            "/upload/",
            {"csrfmiddlewaretoken": self.token, "reference": reference, "note": ""},
            {"files": (image.name, image.read_bytes())},
        )
        match = re.fullmatch(r"/cases/(\d+)/", headers.get("location", ""))
        if status != 302 or not match:
            raise RuntimeError(f"upload {reference}: {status} {body[:300]!r}")
        return int(match.group(1))


# --------------------------------------------------------------------------------------
# Watching the database for finished readings
# --------------------------------------------------------------------------------------
class Monitor(threading.Thread):
    """Polls PostgreSQL every 10 ms; records when each watched case's reading is done."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        import psycopg2

        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.lock = threading.Lock()
        self.pending: dict[int, threading.Event] = {}
        self.done_at: dict[int, float] = {}
        self.stop_event = threading.Event()

    def watch(self, case_id: int) -> threading.Event:
        with self.lock:
            event = self.pending.setdefault(case_id, threading.Event())
            if case_id in self.done_at:
                event.set()
            return event

    def run(self):
        with self.conn.cursor() as cursor:
            while not self.stop_event.is_set():
                with self.lock:
                    ids = list(self.pending)
                if ids:
                    cursor.execute(
                        "SELECT case_id FROM diagnoses_prediction "
                        "WHERE case_id = ANY(%s) AND status IN ('done', 'failed')",
                        (ids,),
                    )
                    now = time.perf_counter()
                    with self.lock:
                        for (case_id,) in cursor.fetchall():
                            self.done_at.setdefault(case_id, now)
                            self.pending.pop(case_id).set()
                time.sleep(0.01)
        self.conn.close()


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------
def closed_loop(port, user, password, monitor, *, clients: int, per_client: int, tag: str):
    """Each client uploads, waits for the reading, uploads the next one."""
    latencies: list[float] = []
    errors: list[str] = []
    references: list[str] = []
    http_clients: list[Client] = []
    lock = threading.Lock()

    def client_main(index: int):
        client = Client(port)
        http_clients.append(client)
        try:
            client.login(user, password)
            for i in range(per_client):
                reference = f"{tag}-{index}-{i}"
                image = SAMPLES[(index + i) % len(SAMPLES)]
                with lock:
                    references.append(reference)
                started = time.perf_counter()
                case_id = client.upload(image, reference)
                event = monitor.watch(case_id)
                if not event.wait(120):
                    raise RuntimeError(f"{reference}: no reading after 120 s")
                with lock:
                    latencies.append(monitor.done_at[case_id] - started)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"client {index}: {exc}")

    started = time.perf_counter()
    threads = [threading.Thread(target=client_main, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    statuses = [s for c in http_clients for s in c.statuses]
    return {
        "clients": clients,
        "uploads": len(latencies),
        "p50_ms": pct(latencies, 50) * 1000,
        "p95_ms": pct(latencies, 95) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "mean_ms": (statistics.fmean(latencies) * 1000) if latencies else float("nan"),
        "cases_per_s": len(latencies) / elapsed,
        "errors": errors,
        "server_errors": sum(1 for s in statuses if s >= 500),
        "references": references,
    }


def open_loop(port, user, password, monitor, *, clients: int, total: int, tag: str):
    """Clients upload as fast as the web answers; the worker drains the queue."""
    errors: list[str] = []
    references: list[str] = []
    case_ids: list[int] = []
    post_ms: list[float] = []
    http_clients: list[Client] = []
    lock = threading.Lock()
    logged_in = threading.Barrier(clients + 1)

    def client_main(index: int):
        client = Client(port)
        http_clients.append(client)
        try:
            client.login(user, password)
        finally:
            logged_in.wait()
        try:
            for i in range(index, total, clients):
                reference = f"{tag}-{i}"
                with lock:
                    references.append(reference)
                t0 = time.perf_counter()
                case_id = client.upload(SAMPLES[i % len(SAMPLES)], reference)
                with lock:
                    post_ms.append((time.perf_counter() - t0) * 1000)
                    case_ids.append(case_id)
                monitor.watch(case_id)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"client {index}: {exc}")

    threads = [threading.Thread(target=client_main, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    logged_in.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    uploaded = time.perf_counter()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and any(c not in monitor.done_at for c in case_ids):
        time.sleep(0.05)
    finished = [monitor.done_at[c] for c in case_ids if c in monitor.done_at]
    last = max(finished, default=uploaded)
    statuses = [s for c in http_clients for s in c.statuses]
    return {
        "clients": clients,
        "uploads": len(case_ids),
        "readings": len(finished),
        "upload_phase_s": uploaded - started,
        "total_s": last - started,
        "cases_per_s": len(finished) / (last - started),
        "post_p50_ms": pct(post_ms, 50),
        "post_p95_ms": pct(post_ms, 95),
        "errors": errors,
        "server_errors": sum(1 for s in statuses if s >= 500),
        "references": references,
    }


def verify(dsn: str, media: Path, references: list[str]) -> dict:
    """Lost / duplicated / failed counts for these upload references."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT c.reference, COUNT(DISTINCT c.id), COUNT(p.id), "
            "COUNT(p.id) FILTER (WHERE p.status = 'done'), "
            "ARRAY_AGG(p.heatmap) FILTER (WHERE p.status = 'done') "
            "FROM diagnoses_case c LEFT JOIN diagnoses_prediction p ON p.case_id = c.id "
            "WHERE c.reference = ANY(%s) GROUP BY c.reference",
            (references,),
        )
        rows = {r[0]: r[1:] for r in cursor.fetchall()}
    lost = sum(1 for ref in references if ref not in rows or rows[ref][2] == 0)
    duplicated = sum(1 for cases, preds, _, _ in rows.values() if cases > 1 or preds > 1)
    not_done = sum(1 for _, preds, done, _ in rows.values() if preds and not done)
    heatmaps = [h for *_, names in rows.values() for h in (names or [])]
    missing = sum(1 for name in heatmaps if not name or not (media / name).is_file())
    return {"lost": lost, "duplicated": duplicated, "failed": not_done, "missing_heatmaps": missing}


def model_versions_used(dsn: str) -> list[str]:
    """The model versions that made the readings (the active one when all went well)."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT m.name FROM diagnoses_prediction p "
            "JOIN diagnoses_modelversion m ON m.id = p.model_version_id ORDER BY m.name"
        )
        return [row[0] for row in cursor.fetchall()]


# --------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------
def create_database(database_url: str) -> tuple[str, str]:
    import psycopg2

    parts = urlsplit(database_url)
    name = f"{parts.path.lstrip('/')}_bench{os.getpid()}"
    conn = psycopg2.connect(database_url.replace("pgsql://", "postgresql://", 1))
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name, parts._replace(path="/" + name).geturl()


def drop_database(database_url: str, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(database_url.replace("pgsql://", "postgresql://", 1))
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def machine() -> dict:
    return {
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "cores": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
    }


def process_tree_memory(root_pid: int) -> list[dict]:
    """RSS and peak RSS (VmHWM) of a process and its descendants, from /proc (Linux)."""
    statuses = {}
    for path in Path("/proc").glob("[0-9]*/status"):
        try:  # a process may end while this reads
            statuses[int(path.parent.name)] = dict(
                line.split(":\t", 1) for line in path.read_text().splitlines()
            )
        except (OSError, ValueError):
            continue
    children: dict[int, list[int]] = {}
    for pid, status in statuses.items():
        children.setdefault(int(status["PPid"]), []).append(pid)
    memory, todo = [], [root_pid]
    while todo:
        pid = todo.pop(0)
        todo.extend(children.get(pid, []))
        if pid in statuses:
            memory.append(
                {
                    "pid": pid,
                    "name": statuses[pid]["Name"].strip(),
                    "rss_mb": int(statuses[pid].get("VmRSS", "0 kB").split()[0]) // 1024,
                    "peak_rss_mb": int(statuses[pid].get("VmHWM", "0 kB").split()[0]) // 1024,
                }
            )
    return memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="latency1,latency10,throughput")
    parser.add_argument("--latency-n", type=int, default=20, help="uploads per client")
    parser.add_argument("--throughput-n", type=int, default=500)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the database and logs")
    args = parser.parse_args()

    database_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL")
    if not database_url.startswith(("postgres://", "postgresql://", "pgsql://")) or not redis_url:
        parser.error("set DATABASE_URL (PostgreSQL) and REDIS_URL")
    work = Path(f"/tmp/pneumosite-load-{os.getpid()}")
    work.mkdir()
    db_name, bench_url = create_database(database_url)
    dsn = bench_url.replace("pgsql://", "postgresql://", 1)
    port = free_port()
    prefix = f"pneumobench-{uuid.uuid4().hex[:8]}:"
    env = production_env(
        work / "var",
        DATABASE_URL=bench_url,
        REDIS_URL=redis_url,
        PNEUMOSITE_BROKER_KEY_PREFIX=prefix,
        DJANGO_ALLOWED_HOSTS=HOST,
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_SECURE_COOKIES="0",
        DJANGO_SECURE_HSTS_SECONDS="0",
        GUNICORN_BIND=f"127.0.0.1:{port}",
        CELERY_CONCURRENCY=str(args.worker_concurrency),
    )
    processes: list[RoleProcess] = []
    results: dict = {"machine": machine(), "args": vars(args) | {"json": str(args.json)}}
    ok = True
    try:
        subprocess.run(
            ["bash", str(ENTRYPOINT), "manage", "collectstatic", "--noinput"],
            env=env, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        web = RoleProcess("web", env, work / "web.log")
        processes.append(web)
        worker = RoleProcess("worker", env, work / "worker.log")
        processes.append(worker)
        wait_http(web, port, HOST, timeout=300)
        worker.wait_for_log("ready.", 120)
        password = uuid.uuid4().hex
        subprocess.run(
            ["bash", str(ENTRYPOINT), "manage", "shell", "-c",
             "from django.contrib.auth import get_user_model; "
             f"get_user_model().objects.create_user('bench', password='{password}')"],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        monitor = Monitor(dsn)
        monitor.start()
        # Warm-up (not measured): every worker process imports TensorFlow and loads the model.
        warm = closed_loop(
            port, "bench", password, monitor,
            clients=args.worker_concurrency, per_client=2, tag="warmup",
        )  # fmt: skip
        if warm["errors"]:
            raise RuntimeError(f"warm-up failed: {warm['errors']}")
        for scenario in [s for s in args.scenarios.split(",") if s]:
            results["machine"]["loadavg_before_" + scenario] = os.getloadavg()
            if scenario == "latency1":
                result = closed_loop(
                    port, "bench", password, monitor,
                    clients=1, per_client=args.latency_n, tag=scenario,
                )  # fmt: skip
            elif scenario == "latency10":
                result = closed_loop(
                    port, "bench", password, monitor,
                    clients=args.clients, per_client=args.latency_n, tag=scenario,
                )  # fmt: skip
            elif scenario == "throughput":
                result = open_loop(
                    port, "bench", password, monitor,
                    clients=args.clients, total=args.throughput_n, tag=scenario,
                )  # fmt: skip
            else:
                parser.error(f"unknown scenario {scenario}")
            result.update(verify(dsn, work / "var" / "media", result.pop("references")))
            bad = (
                result["lost"] + result["duplicated"] + result["failed"]
                + result["missing_heatmaps"] + result["server_errors"] + len(result["errors"])
            )  # fmt: skip
            ok = ok and bad == 0
            results[scenario] = result
            print(scenario, json.dumps(result, default=float), flush=True)
        monitor.stop_event.set()
        results["model_versions"] = model_versions_used(dsn)
        results["memory_at_end"] = {
            "web": process_tree_memory(web.process.pid),
            "worker": process_tree_memory(worker.process.pid),
        }
        for name in ("web", "worker"):
            log = (work / f"{name}.log").read_text(errors="replace").splitlines()
            errors = [
                index
                for index, line in enumerate(log)
                if '"level": "ERROR"' in line or "Traceback" in line
            ]
            results[f"{name}_log_errors"] = len(errors)
            # The log goes with the work folder; keep enough of it to tell what went wrong.
            results[f"{name}_log_error_excerpts"] = [
                "\n".join(log[index : index + 12]) for index in errors[:5]
            ]
    finally:
        for proc in reversed(processes):
            proc.stop()
        try:
            import redis

            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(match=f"{prefix}*", count=500))
            if keys:
                client.delete(*keys)
        except Exception:  # noqa: BLE001
            pass
        if not args.keep:
            drop_database(database_url, db_name)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept database {db_name} and {work}")
    print(json.dumps(results, indent=2, default=float))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    if not ok:
        print("FAILED: lost, duplicated or failed readings, or server errors", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
