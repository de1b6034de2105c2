"""S3 storage whose signed URLs may name another endpoint than the one the app uses.

In docker-compose the app reaches MinIO at http://minio:9000, a name the browser cannot
resolve; views redirect the browser to signed URLs (diagnoses.file_responses).
With AWS_S3_PUBLIC_ENDPOINT_URL (e.g. http://localhost:9000, MinIO's published port)
those URLs are signed for that endpoint instead. Signing needs no network access.
settings.py uses this class only when AWS_S3_PUBLIC_ENDPOINT_URL is set.
"""

from __future__ import annotations

from storages.backends.s3 import S3Storage as BaseS3Storage
from storages.utils import clean_name


class S3Storage(BaseS3Storage):
    def get_default_settings(self):
        return {**super().get_default_settings(), "public_endpoint_url": None}

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_public_client", None)
        return state

    def _get_public_client(self):
        client = self.__dict__.get("_public_client")
        if client is None:  # boto3 clients are thread-safe; one per storage instance
            client = self._create_session().client(
                "s3",
                region_name=self.region_name,
                use_ssl=self.use_ssl,
                endpoint_url=self.public_endpoint_url,
                config=self.client_config,
                verify=self.verify,
            )
            self.__dict__["_public_client"] = client
        return client

    def url(self, name, parameters=None, expire=None, http_method=None):
        if not self.public_endpoint_url or not self.querystring_auth or self.custom_domain:
            return super().url(name, parameters, expire, http_method)
        params = dict(parameters or {})
        params["Bucket"] = self.bucket_name
        params["Key"] = self._normalize_name(clean_name(name))
        return self._get_public_client().generate_presigned_url(
            "get_object",
            Params=params,
            ExpiresIn=self.querystring_expire if expire is None else expire,
            HttpMethod=http_method,
        )
