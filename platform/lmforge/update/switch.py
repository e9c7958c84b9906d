"""Putting a version on the live deployment: Serve's rolling update of the running app (``lmforge serve``
again with a new export under the same name), then waiting until ``/v1/models`` reports the new version.
Serve replaces a fifth of the replicas at a time (at least one): an old replica finishes its requests and
stops, a new one starts in its place. With one replica, requests that arrive between the two wait in
Serve's router for the new one instead of failing. The rollout is the Serve controller's, not this
process's: a crash here leaves it going on to the new version (or, if never started, the old version
serving), never nothing deployed."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lmforge import config as cfgmod

log = logging.getLogger("lmforge.update")


def serve_config(serve: dict, model: str, ray: dict, model_name: str | None):
    """The ServeConfig of the deployment with ``model`` behind it, under the name served now."""
    from lmforge.serve.config import ServeConfig

    section = {**serve, "model": model, "ray": ray}
    opts = dict(section.get("serve") or {})
    if model_name and not opts.get("model_name"):
        opts["model_name"] = model_name
    opts["detach"] = True
    section["serve"] = opts
    return cfgmod.from_dict(ServeConfig, section, "serve")


def endpoint(serve: dict, ray: dict) -> str:
    from lmforge.serve import server

    return server.base_url(serve_config(serve, "-", ray, None)) + "/v1"


def version_of(export_dir: str) -> str:
    from lmforge import storage
    from lmforge.serve.catalog import fingerprint

    return fingerprint(Path(storage.local_dir(export_dir)))


def switch_to(serve: dict, ray: dict, export_dir: str, model_name: str, api_key_env: str, timeout_s: float) -> str:
    """Roll the deployment over to ``export_dir`` (in the connected Ray session); returns its version once
    ``/v1/models`` reports it."""
    from lmforge.monitor.probe import served
    from lmforge.serve import server

    cfg = serve_config(serve, export_dir, ray, model_name)
    want = version_of(export_dir)
    log.info("update: switching %s to %s (version %s)", model_name, export_dir, want)
    server.start(cfg)
    url = server.base_url(cfg) + "/v1"
    deadline = time.monotonic() + timeout_s
    while (now := served(url, api_key_env))["version"] != want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"update: {url} still serves version {now['version']} after {timeout_s:.0f} s, "
                               f"not {want}")
        time.sleep(1.0)
    return want
