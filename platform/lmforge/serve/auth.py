"""API keys: from config, an environment variable and a file; checked by digest, never shipped or logged.

The serving replicas receive SHA-256 digests of the keys, not the keys, so a key appears in no
deployment config, log line or error body; a request's bearer token is hashed and compared in constant
time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path


def load_keys(keys: list[str], env_var: str | None, path: str | None) -> list[str]:
    """Every configured key: the listed ones, ``$env_var`` (comma-separated) and ``path`` (one per line)."""
    found = [k.strip() for k in keys]
    if env_var and os.environ.get(env_var):
        found += [k.strip() for k in os.environ[env_var].split(",")]
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"serve.api_keys_file: {path} does not exist")
        found += [line.strip() for line in file.read_text().splitlines()]
    return sorted({k for k in found if k and not k.startswith("#")})


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def authorized(authorization: str | None, digests: list[str]) -> bool:
    """True when no key is configured, or the ``Authorization: Bearer <key>`` header holds one of them."""
    if not digests:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    got = digest(token.strip())
    return any(hmac.compare_digest(got, d) for d in digests)
