"""Uploads on S3: settings.py's S3 storage against a real S3 server over HTTP (moto)."""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.files.base import ContentFile
from test_foundation import clean_env, dump_settings

# Fixtures s3_server, s3_bucket: a moto S3 server on loopback (tests/s3server.py).
pytest_plugins = ["s3server"]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def s3_settings(s3_server, s3_bucket, settings, tmp_path):
    """settings.STORAGES exactly as settings.py builds them from the AWS_* variables."""
    dumped = dump_settings(clean_env(tmp_path / "var", **s3_server.env(s3_bucket)))
    settings.STORAGES = {**settings.STORAGES, "default": dumped["STORAGES"]["default"]}
    return dumped["STORAGES"]["default"]


@pytest.fixture
def storage(s3_settings):
    from django.core.files.storage import default_storage

    return default_storage


def test_settings_select_private_signed_s3(s3_settings, s3_bucket):
    assert s3_settings["BACKEND"] == "storages.backends.s3.S3Storage"
    options = s3_settings["OPTIONS"]
    assert options["bucket_name"] == s3_bucket
    assert options["default_acl"] == "private"
    assert options["querystring_auth"] is True
    assert 0 < options["querystring_expire"] <= 900
    assert options["file_overwrite"] is False
    assert options["signature_version"] == "s3v4"
    assert options["addressing_style"] == "path"


def test_save_read_delete_through_default_storage(storage, s3_server, s3_bucket):
    name = storage.save("cases/original/scan.jpeg", ContentFile(b"\xff\xd8 x-ray bytes"))
    assert name == "cases/original/scan.jpeg"
    # The object is really in the bucket (not in a local folder).
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=name)
    assert head["ContentLength"] == len(b"\xff\xd8 x-ray bytes")
    assert storage.exists(name)
    assert storage.size(name) == len(b"\xff\xd8 x-ray bytes")
    with storage.open(name, "rb") as fh:
        assert fh.read() == b"\xff\xd8 x-ray bytes"
    storage.delete(name)
    assert not storage.exists(name)
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket)
    assert listed.get("KeyCount", 0) == 0


def test_url_is_signed_short_lived_and_works_over_http(storage, s3_server, s3_bucket):
    name = storage.save("cases/display/a.png", ContentFile(b"png bytes"))
    url = storage.url(name)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    # Path-style URL on the configured endpoint.
    assert f"{parts.scheme}://{parts.netloc}" == s3_server.endpoint
    assert parts.path == f"/{s3_bucket}/{name}"
    # Signature v4 with the storage's short expiry.
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["300"]
    assert query["X-Amz-Credential"][0].startswith(s3_server.access_key + "/")
    assert query["X-Amz-Signature"][0]
    assert http_get(url) == (200, b"png bytes")
    # The same URL without the signature is refused.
    status, _ = http_get(f"{parts.scheme}://{parts.netloc}{parts.path}")
    assert status == 403


def test_signed_url_names_the_download(storage, s3_bucket):
    """The app asks S3 for a file name: stored names have no extension."""
    from diagnoses.file_responses import _signed_url

    name = storage.save("cases/original/uuid-without-extension", ContentFile(b"jpeg bytes"))
    url = _signed_url(storage, name, "case-7.jpg")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"jpeg bytes"
        assert response.headers["Content-Disposition"] == 'inline; filename="case-7.jpg"'


def test_file_overwrite_false_keeps_both_files(storage):
    first = storage.save("models/v1/model.keras", ContentFile(b"first"))
    second = storage.save("models/v1/model.keras", ContentFile(b"second"))
    assert first == "models/v1/model.keras"
    assert second != first and second.startswith("models/v1/model")
    assert second.endswith(".keras")
    with storage.open(first, "rb") as fh:
        assert fh.read() == b"first"
    with storage.open(second, "rb") as fh:
        assert fh.read() == b"second"


def test_objects_are_private(storage, s3_server, s3_bucket):
    name = storage.save("cases/original/private.jpeg", ContentFile(b"patient image"))
    client = s3_server.client()
    grants = client.get_object_acl(Bucket=s3_bucket, Key=name)["Grants"]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]
    assert all(g["Grantee"]["Type"] == "CanonicalUser" for g in grants)
    anonymous_url = f"{s3_server.endpoint}/{s3_bucket}/{name}"
    assert http_get(anonymous_url)[0] == 403
    # Control: the server does serve a public-read object anonymously, so the 403
    # above comes from the private ACL.
    client.put_object(Bucket=s3_bucket, Key="control.txt", Body=b"public", ACL="public-read")
    assert http_get(f"{s3_server.endpoint}/{s3_bucket}/control.txt") == (200, b"public")


def test_public_endpoint_signs_urls_for_the_browser_host(
    s3_server,
    s3_bucket,
    settings,
    tmp_path,
):
    """docker-compose: the app talks to http://minio:9000, browsers to localhost:9000."""
    from django.core.files.storage import default_storage

    public = s3_server.endpoint.replace("127.0.0.1", "localhost")
    env = clean_env(tmp_path / "var", **s3_server.env(s3_bucket), AWS_S3_PUBLIC_ENDPOINT_URL=public)
    dumped = dump_settings(env)["STORAGES"]["default"]
    assert dumped["BACKEND"] == "pneumosite.storage.S3Storage"
    assert dumped["OPTIONS"]["public_endpoint_url"] == public
    settings.STORAGES = {**settings.STORAGES, "default": dumped}

    name = default_storage.save("cases/thumbnail/t.jpg", ContentFile(b"thumb"))
    url = default_storage.url(name)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == public
    assert parts.path == f"/{s3_bucket}/{name}"
    query = parse_qs(parts.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["300"]
    assert http_get(url) == (200, b"thumb")
    # Storage operations still use the internal endpoint.
    assert default_storage.connection.meta.client.meta.endpoint_url == s3_server.endpoint
