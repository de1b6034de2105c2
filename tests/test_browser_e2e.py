"""End to end in a real browser: Chromium (Playwright) against gunicorn and a Celery worker.

The app runs as the deployment runs it: `scripts/entrypoint.sh web` (migrate, ensure_model,
gunicorn; production settings) and `entrypoint.sh worker`, both on this test's database
(`current_database_url()`) and sharing one private var/ (media and the embedded filesystem
broker). One browser session walks through the whole scenario:

1. a clinician logs in on the login page and uploads a NORMAL and a PNEUMONIA sample in one
   go (file input, multiple), plus one more sample with its own reference;
2. each case page says "queued" (the worker is started only after that, so this is
   deterministic), then shows the reading without a manual reload; the readings are the
   ones mlcore's Predictor gives for those files; the Grad-CAM overlay is shown and the
   toggle hides and shows it again;
3. the history lists the cases, the filter form filters by reading, the search box finds
   a case by its reference;
4. a staff reviewer corrects one reading in the Django admin (review inline on the case);
   the history and the case page show the verdict;
5. a text file renamed .jpg is rejected with the validation message and creates no case.

Screenshots of the upload, case (heatmap shown) and history pages go to a temporary folder,
or to PNEUMOSITE_SCREENSHOT_DIR when set (`PNEUMOSITE_SCREENSHOT_DIR=docs/screenshots
pytest tests/test_browser_e2e.py` refreshes the README's screenshots).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
from conftest import current_database_url, require_service
from fixtures.casedata import NORMAL_SAMPLE, PNEUMONIA_SAMPLE, SAMPLES, find_model_dir
from stackkit import (
    RoleProcess,
    collectstatic,
    copy_model_dir,
    free_port,
    production_env,
    wait_http,
)

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
SOLO_SAMPLE = SAMPLES / "NORMAL" / "IM-0101-0001.jpeg"
READING_TIMEOUT_MS = 180_000  # worker start (TensorFlow import, model load) + inference


def percent(probability: float) -> str:
    """As the site shows it (diagnoses_tags.percent / reading_text)."""
    return f"{probability * 100:.1f}%"


def expected_percents(probability: float) -> set[str]:
    # The worker and this process run the same float32 forward pass; allow for a last-bit
    # difference that would flip the rounding of the displayed tenth of a percent.
    return {percent(probability + delta) for delta in (-1e-6, 0.0, 1e-6)}


def expected_reading_text(label: str, probability: float) -> set[str]:
    if label == "pneumonia":
        return {f"Pneumonia likely — {p}" for p in expected_percents(probability)}
    return {f"Normal likely — {p} pneumonia probability" for p in expected_percents(probability)}


def screenshot_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("PNEUMOSITE_SCREENSHOT_DIR", "").strip()
    folder = Path(configured) if configured else tmp_path / "screenshots"
    if not folder.is_absolute():
        folder = Path(__file__).resolve().parent.parent / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def make_user(django_user_model, username: str, *, staff=False, perms=()):
    from django.contrib.auth.models import Permission

    password = uuid.uuid4().hex
    user = django_user_model.objects.create_user(username, password=password, is_staff=staff)
    if perms:
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="diagnoses", codename__in=perms)
        )
    return user, password


def log_in(page, base: str, username: str, password: str, path="/accounts/login/"):
    page.goto(base + path)
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_load_state()


def history_rows(page) -> dict[int, dict[str, str]]:
    """Case id -> {reference, reading, review} from the history table."""
    rows = {}
    for row in page.locator("tr.case-row").all():
        cells = row.locator("td")
        rows[int(row.get_attribute("data-case"))] = {
            "reference": cells.nth(1).inner_text().strip(),
            "reading": cells.nth(3).inner_text().strip(),
            "review": cells.nth(6).inner_text().strip(),
        }
    return rows


@pytest.mark.django_db(transaction=True)
def test_browser_upload_reading_history_review_and_rejection(tmp_path, django_user_model):
    require_service("chromium", CHROMIUM.is_file(), f"{CHROMIUM} (apt-get install chromium)")
    model = find_model_dir()
    from playwright.sync_api import expect, sync_playwright

    from diagnoses.models import Case, Review

    shots = screenshot_dir(tmp_path)
    clinician, clinician_password = make_user(django_user_model, "e2e-clinician")
    reviewer, reviewer_password = make_user(
        django_user_model, "e2e-reviewer", staff=True, perms=("view_case", "add_review")
    )

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = production_env(
        tmp_path / "var",
        DATABASE_URL=current_database_url(),  # the test database
        PNEUMOSITE_MODELS_DIR=str(copy_model_dir(model, tmp_path / "models")),
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_SECURE_COOKIES="0",
        DJANGO_SECURE_HSTS_SECONDS="0",
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        CELERY_CONCURRENCY="1",
    )
    collectstatic(env)

    processes: list[RoleProcess] = []
    playwright = browser = None
    page_errors: list[str] = []
    try:
        web = RoleProcess("web", env, tmp_path / "web.log")
        processes.append(web)
        wait_http(web, port, "127.0.0.1", timeout=180)

        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(30_000)
        context.on("weberror", lambda error: page_errors.append(str(error.error)))
        page = context.new_page()

        # 1. Log in through the login page; upload two samples in one go. ----------------
        log_in(page, base, clinician.username, clinician_password)
        assert page.url == base + "/", page.url
        expect(page.locator("header nav")).to_contain_text("e2e-clinician")

        batch_ref = f"E2E-BATCH-{uuid.uuid4().hex[:6]}"
        page.goto(base + "/upload/")
        page.set_input_files("input[type=file][name=files]", [NORMAL_SAMPLE, PNEUMONIA_SAMPLE])
        expect(page.locator("#drop-count")).to_have_text("2 file(s) selected")
        page.fill("input[name=reference]", batch_ref)
        page.fill("textarea[name=note]", "Browser end-to-end test upload")
        page.screenshot(path=str(shots / "upload.png"))
        page.click("form.upload-form button[type=submit]")
        page.wait_for_url(base + "/")
        expect(page.locator(".messages")).to_contain_text("2 image(s) uploaded")
        batch = history_rows(page)
        assert len(batch) == 2 and {r["reference"] for r in batch.values()} == {batch_ref}

        # One more sample with its own reference (one file: straight to its case page).
        solo_ref = f"E2E-SOLO-{uuid.uuid4().hex[:6]}"
        page.goto(base + "/upload/")
        page.set_input_files("input[type=file][name=files]", SOLO_SAMPLE)
        page.fill("input[name=reference]", solo_ref)
        page.click("form.upload-form button[type=submit]")
        page.wait_for_url(re.compile(re.escape(base) + r"/cases/\d+/$"))
        solo_id = int(page.url.rstrip("/").rsplit("/", 1)[1])

        # 2. Case pages: queued, then the reading appears without a manual reload. ------
        case_ids = [*sorted(batch), solo_id]
        pages = {solo_id: page}
        for case_id in sorted(batch):
            pages[case_id] = context.new_page()
            pages[case_id].goto(f"{base}/cases/{case_id}/")
        for case_page in pages.values():
            expect(case_page.locator("#prediction-status")).to_have_text("Prediction queued…")
            expect(case_page.locator("#reading-text")).to_have_count(0)
            expect(case_page.locator("#heatmap")).to_have_count(0)

        worker = RoleProcess(
            "worker",
            {**env, "CELERY_WORKER_NAME": f"e2e-{uuid.uuid4().hex[:6]}@%h"},
            tmp_path / "worker.log",
        )
        processes.append(worker)
        readings: dict[int, tuple[str, str]] = {}  # case id -> (file name, reading text)
        for case_id, case_page in pages.items():
            text = case_page.locator("#reading-text")
            expect(text).to_be_visible(timeout=READING_TIMEOUT_MS)
            expect(case_page.locator("#prediction-status")).to_have_count(0)
            filename = case_page.locator("dl.case-facts dd").nth(1).inner_text().split(" (")[0]
            readings[case_id] = (filename, text.inner_text().strip())
        assert "succeeded" in worker.log_text()

        # The same numbers as the model loaded straight from its folder by mlcore.
        from mlcore.inference import Predictor

        predictor = Predictor.load(model)
        labels: dict[int, str] = {}
        for case_id, (filename, shown) in readings.items():
            sample = next(
                p for p in (NORMAL_SAMPLE, PNEUMONIA_SAMPLE, SOLO_SAMPLE) if p.name == filename
            )
            expected = predictor.predict(sample.read_bytes())
            assert shown in expected_reading_text(expected.label, expected.probability), (
                case_id,
                filename,
                shown,
                expected,
            )
            labels[case_id] = expected.label
            case_page = pages[case_id]
            assert (
                case_page.locator(
                    f"table.predictions td:text-is('{expected.label.capitalize()}')"
                ).count()
                == 1
            )
        assert {readings[c][0] for c in batch} == {NORMAL_SAMPLE.name, PNEUMONIA_SAMPLE.name}

        # The Grad-CAM overlay is shown over the X-ray and the toggle hides/shows it.
        case_id = next(c for c in batch if readings[c][0] == PNEUMONIA_SAMPLE.name)
        case_page = pages[case_id]
        heatmap = case_page.locator("#heatmap")
        expect(heatmap).to_be_visible()
        assert heatmap.get_attribute("src") == f"/cases/{case_id}/image/heatmap/"
        case_page.wait_for_function(
            "() => document.getElementById('heatmap').complete"
            " && document.getElementById('heatmap').naturalWidth > 0"
        )
        toggle = case_page.locator("#heatmap-toggle")
        expect(toggle).to_be_checked()
        toggle.click()
        expect(heatmap).to_be_hidden()
        expect(case_page.locator(".stack img").first).to_be_visible()  # the X-ray stays
        toggle.click()
        expect(heatmap).to_be_visible()
        case_page.bring_to_front()
        case_page.evaluate("window.scrollTo(0, 0)")
        case_page.screenshot(path=str(shots / "case.png"))

        # 3. History: lists all, filters by reading, finds a case by reference. ----------
        page.goto(base + "/")
        rows = history_rows(page)
        assert set(rows) == set(case_ids)
        for case_id in case_ids:
            assert rows[case_id]["reading"] == labels[case_id].capitalize()
            assert rows[case_id]["review"] == "not reviewed"
        for label in ("normal", "pneumonia"):
            page.goto(base + "/")
            page.select_option("select[name=reading]", label)
            page.click("form.filters button[type=submit]")
            page.wait_for_url(re.compile(r"reading=" + label))
            expected_ids = {c for c in case_ids if labels[c] == label}
            assert set(history_rows(page)) == expected_ids, label
            if not expected_ids:
                expect(page.locator("main")).to_contain_text("No cases match these filters")
        page.goto(base + "/")
        page.fill("input[name=q]", solo_ref)
        page.click("form.filters button[type=submit]")
        page.wait_for_url(re.compile(r"q=" + solo_ref))
        assert set(history_rows(page)) == {solo_id}
        page.goto(base + "/")
        page.screenshot(path=str(shots / "history.png"))

        # 4. A staff reviewer corrects one reading in the admin. -------------------------
        corrected_id = case_id  # the PNEUMONIA sample's case
        verdict = "normal" if labels[corrected_id] == "pneumonia" else "pneumonia"
        staff = browser.new_context(viewport=VIEWPORT)
        staff.on("weberror", lambda error: page_errors.append(str(error.error)))
        admin = staff.new_page()
        log_in(admin, base, reviewer.username, reviewer_password, path="/admin/login/")
        admin.goto(f"{base}/admin/diagnoses/case/{corrected_id}/change/")
        expect(admin.locator("body")).to_contain_text(labels[corrected_id])
        admin.select_option("select[name$='-verdict']", verdict)
        admin.fill("textarea[name$='-comment'], input[name$='-comment']", "E2E correction")
        admin.click("input[name=_save]")
        admin.wait_for_url(re.compile(r"/admin/diagnoses/case/(\?.*)?$"))
        expect(admin.locator(".messagelist")).to_contain_text("was changed successfully")

        page.goto(base + "/")
        rows = history_rows(page)
        assert rows[corrected_id]["review"] == verdict
        assert all(rows[c]["review"] == "not reviewed" for c in case_ids if c != corrected_id)
        page.goto(f"{base}/cases/{corrected_id}/")
        expect(page.locator("#reading-panel")).to_contain_text(
            f"Reviewer verdict: {verdict.capitalize()} (e2e-reviewer"
        )
        page.goto(base + "/?reviewed=yes")
        assert set(history_rows(page)) == {corrected_id}

        # 5. Over the file limit, the page says so and will not send the batch; -------
        #    a text file renamed .jpg is rejected and creates no case.
        page.goto(base + "/upload/")
        limit = int(page.get_attribute("input[type=file][name=files]", "data-max-files"))
        too_many = [
            {"name": f"x{i}.png", "mimeType": "image/png", "buffer": b"x"} for i in range(limit + 1)
        ]
        page.set_input_files("input[type=file][name=files]", too_many)
        expect(page.locator("#drop-count")).to_have_text(
            f"{limit + 1} files selected: at most {limit} can be sent at once."
        )
        expect(page.locator("form.upload-form button[type=submit]")).to_be_disabled()
        page.set_input_files(
            "input[type=file][name=files]",
            {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"just some text\n" * 20},
        )
        page.click("form.upload-form button[type=submit]")
        page.wait_for_load_state()
        assert page.url == base + "/upload/"
        expect(page.locator("ul.rejected")).to_have_text(
            "notes.jpg: Unsupported file type: only JPEG, PNG and DICOM chest X-rays are accepted."
        )
        assert page_errors == []
    finally:
        if browser is not None:
            browser.close()
        if playwright is not None:
            playwright.stop()
        codes = {proc.role: proc.stop() for proc in reversed(processes)}
    assert all(code == 0 for code in codes.values()), (
        codes,
        {p.role: p.log_text()[-3000:] for p in processes},
    )

    # The database, checked once the browser is gone (Playwright's sync API runs an event
    # loop in this thread, where Django refuses ORM calls).
    assert sorted(Case.objects.values_list("pk", flat=True)) == sorted(case_ids)  # none from 5.
    review = Review.objects.get()
    assert (review.case_id, review.verdict, review.reviewer_id, review.comment) == (
        corrected_id,
        verdict,
        reviewer.pk,
        "E2E correction",
    )
