"""A real S3-compatible HTTP server on loopback for the storage and native-stack tests.

MinIO (what docker-compose.yml runs) has no Debian or PyPI package here, so the tests
use moto's server mode (`moto[server]`, in requirements-dev.txt): an S3 API over HTTP on
127.0.0.1, started in a thread of the test process for the session. Moto refuses
anonymous reads of private objects but does not verify signatures or expiry.

Test modules load the fixtures with `pytest_plugins = ["s3server"]` (one server per run).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from stackkit import free_port


@dataclass
class S3Server:
    endpoint: str
    access_key: str = "pneumosite-test-access"
    secret_key: str = "pneumosite-test-secret"
    region: str = "us-east-1"

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def env(self, bucket: str) -> dict[str, str]:
        """The variables that point pneumosite's settings at this server and bucket."""
        return {
            "AWS_STORAGE_BUCKET_NAME": bucket,
            "AWS_S3_ENDPOINT_URL": self.endpoint,
            "AWS_S3_REGION_NAME": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint=f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A new empty private bucket; emptied and removed after the test."""
    client = s3_server.client()
    name = f"pneumo-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield name
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)
