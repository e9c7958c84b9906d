"""How lmforge reaches S3: a pyarrow filesystem from the standard AWS settings, and those settings as
environment variables for Ray tasks. Credentials come from the environment, profile or instance role,
the region from ``AWS_REGION``/``AWS_DEFAULT_REGION``, a custom endpoint (MinIO, moto, ...) from
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``."""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def s3_filesystem():
    """A pyarrow S3 filesystem from the standard AWS environment (cached per process)."""
    import boto3
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    session = boto3.Session()
    creds = session.get_credentials()
    kwargs = {"region": session.region_name or os.environ.get("AWS_REGION") or "us-east-1"}
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    return fs.S3FileSystem(**kwargs)


AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
           "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def aws_env() -> dict[str, str]:
    """The driver's AWS settings, handed to Ray tasks that read S3 (workers started before they were
    set would not see them). Clusters with instance roles need none of these."""
    return {k: os.environ[k] for k in AWS_ENV if k in os.environ}
