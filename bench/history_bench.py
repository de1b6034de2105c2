"""History page server time with many cases: `python bench/history_bench.py [--cases 10000]`.

    DATABASE_URL=postgres://... .venv/bin/python bench/history_bench.py

Creates a fresh database `<DATABASE_URL's name>_hist<pid>` (dropped afterwards; the role
needs CREATEDB), migrates it, bulk-creates --cases cases, each with a done prediction
(every 10th also an older failed one, every 5th a review), then requests the history page
in-process through Django's full stack (middleware, view, template; production settings,
DEBUG off, a logged-in user) and reports the server time per request (p50/p95 of --repeat
requests after 3 warm-up ones) and the number of SQL queries, for the first, a middle
and the last page and for the filters. Without DATABASE_URL it runs on a temporary SQLite
file instead.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def pct(values, q):
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def libpq(url: str) -> str:
    return url.replace("pgsql://", "postgresql://", 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pneumosite-hist-"))
    database_url = os.environ.get("DATABASE_URL", "")
    db_name = None
    if database_url.startswith(("postgres://", "postgresql://", "pgsql://")):
        import psycopg2

        parts = urlsplit(database_url)
        db_name = f"{parts.path.lstrip('/')}_hist{os.getpid()}"
        conn = psycopg2.connect(libpq(database_url))
        conn.autocommit = True
        conn.cursor().execute(f'CREATE DATABASE "{db_name}"')
        conn.close()
        os.environ["DATABASE_URL"] = parts._replace(path="/" + db_name).geturl()
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'hist.sqlite3'}"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="pneumosite.settings",
        DJANGO_ENV="production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        DJANGO_ALLOWED_HOSTS="testserver",
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_SECURE_COOKIES="0",
        DJANGO_LOG_LEVEL="WARNING",
        PNEUMOSITE_VAR_DIR=str(tmp / "var"),
        REDIS_URL="",
        CELERY_BROKER_URL="",
    )
    try:
        return run(args)
    finally:
        from django.db import connections

        connections.close_all()
        if db_name:
            import psycopg2

            conn = psycopg2.connect(libpq(database_url))
            conn.autocommit = True
            conn.cursor().execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            conn.close()


def run(args) -> int:
    import io

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from diagnoses.models import Case, ModelVersion, Prediction, Review

    call_command("migrate", verbosity=0)
    call_command("collectstatic", "--noinput", verbosity=0, stdout=io.StringIO())
    user = get_user_model().objects.create_user("hist", password="x", is_staff=True)
    version = ModelVersion.objects.create(
        name="bench-v1", threshold=0.5, image_size=224, is_active=True, model_file="m.keras"
    )

    started = time.perf_counter()
    now = timezone.now()
    batch = 2000
    for offset in range(0, args.cases, batch):
        cases = Case.objects.bulk_create(
            [
                Case(
                    uploaded_by=user,
                    reference=f"ref-{i:05d}",
                    original=f"cases/original/{i}.jpeg",
                    original_filename=f"{i}.jpeg",
                    sha256=f"{i:064x}",
                    image_format="JPEG",
                    width=1024,
                    height=1024,
                    display_image=f"cases/display/{i}.png",
                    thumbnail=f"cases/thumb/{i}.jpg",
                )
                for i in range(offset, min(offset + batch, args.cases))
            ]
        )
        predictions = []
        reviews = []
        for case in cases:
            i = int(case.reference[4:])
            probability = (i * 7919 % 1000) / 1000
            if i % 10 == 0:
                predictions.append(
                    Prediction(
                        case=case,
                        model_version=version,
                        status=Prediction.Status.FAILED,
                        error_message="bench",
                        finished_at=now,
                    )
                )
            predictions.append(
                Prediction(
                    case=case,
                    model_version=version,
                    status=Prediction.Status.DONE,
                    probability=probability,
                    label="pneumonia" if probability >= 0.5 else "normal",
                    threshold=0.5,
                    inference_ms=100.0,
                    heatmap=f"predictions/heatmap/{i}.png",
                    finished_at=now,
                )
            )
            if i % 5 == 0:
                reviews.append(Review(case=case, reviewer=user, verdict="pneumonia"))
        Prediction.objects.bulk_create(predictions)
        Review.objects.bulk_create(reviews)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE")
    created_s = time.perf_counter() - started
    total = Case.objects.count()
    last_page = (total + 24) // 25

    client = Client()
    client.force_login(user)
    urls = [
        ("first page", "/"),
        ("middle page", f"/?page={last_page // 2}"),
        ("last page", f"/?page={last_page}"),
        ("reading=pneumonia", "/?reading=pneumonia"),
        ("status=failed (latest)", "/?status=failed"),
        ("reviewed=yes", "/?reviewed=yes"),
        ("reference prefix", "/?reference=ref-012"),
    ]
    print(
        f"{total} cases, {Prediction.objects.count()} predictions, "
        f"{Review.objects.count()} reviews on {connection.vendor} "
        f"(created in {created_s:.1f} s); {args.repeat} requests each after 3 warm-ups\n"
    )
    print("| page | p50 ms | p95 ms | mean ms | SQL queries |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, url in urls:
        for _ in range(3):
            assert client.get(url).status_code == 200
        queries: list[str] = []

        def count(execute, sql, params, many, context, queries=queries):
            queries.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count):
            response = client.get(url)
        assert response.status_code == 200, response.status_code
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - t0) * 1000)
        print(
            f"| {label} (`{url}`) | {pct(times, 50):.1f} | {pct(times, 95):.1f} | "
            f"{statistics.fmean(times):.1f} | {len(queries)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
