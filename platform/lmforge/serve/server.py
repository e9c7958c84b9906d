"""``lmforge serve``: run the OpenAI-compatible server on Ray Serve until SIGINT/SIGTERM.

Run: ``lmforge serve model=runs/onnx serve.port=8000``, then
``curl 127.0.0.1:8000/v1/completions -d '{"prompt": "The", "max_tokens": 16}'``.

Running it again against the same cluster (``ray.address=...``, ``serve.detach=true``) with a new export
under the same name updates that model's replicas in place, without downtime; the previous export is
brought back the same way.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request

from lmforge.cluster.session import ray_session
from lmforge.serve.config import ServeConfig

log = logging.getLogger(__name__)

APP_NAME = "lmforge"


def base_url(cfg: ServeConfig) -> str:
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    return f"http://{host}:{cfg.serve.port}"


def start(cfg: ServeConfig) -> str:
    """Deploy the app on the connected Ray cluster (or update the one running in place) and wait until it
    answers; returns its base URL."""
    from ray import serve

    from lmforge.cluster.session import keep_ray_logs_off_terminal, metrics_address
    from lmforge.serve.app import build_app
    from lmforge.serve.catalog import served_models

    keep_ray_logs_off_terminal("ray.serve")
    app = build_app(cfg)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    url = base_url(cfg)
    wait_healthy(url, cfg.serve.startup_timeout_s)
    log.info("serve: %s up; OpenAI API at %s/v1; Prometheus metrics at %s", ", ".join(served_models(cfg)), url,
             metrics_address() or "each node's Ray metrics port")
    return url


def stop() -> None:
    """Tear down every Serve app and the Serve controller/proxies of this Ray session."""
    from ray import serve

    serve.shutdown()


def wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"serve: no healthy answer from {url}/healthz within {timeout_s:.0f}s")
        time.sleep(0.5)


def complete(url: str, prompt: str, max_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, api_key: str | None = None, timeout_s: float = 120.0) -> dict:
    """POST one prompt to ``/v1/completions`` and return the decoded JSON response."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                       "seed": seed}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(f"{url}/v1/completions", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return json.loads(r.read())


def run(cfg: ServeConfig) -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then shut Serve (and a local Ray) down; with
    ``serve.detach``, deploy to the cluster and return."""
    import os

    from lmforge.config import ConfigError

    if cfg.serve.detach and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        raise ConfigError("serve.detach: needs ray.address (or RAY_ADDRESS): a local cluster ends with the command")
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ray_session(cfg.ray):
            url = start(cfg)
            if cfg.serve.detach:
                print(f"lmforge deployed to the cluster: {url}/v1", flush=True)
                return
            print(f"lmforge serving at {url}/v1 — Ctrl-C to stop", flush=True)
            try:
                while not stopping.wait(0.5):
                    pass
            finally:
                log.info("serve: shutting down")
                stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def answer_prompts(cfg: ServeConfig, recipe) -> list[dict]:
    """A recipe's ``serve`` stage: start the server, complete each of the recipe's prompts over HTTP,
    print it, and shut the server down."""
    url = start(cfg)
    key = cfg.serve.api_keys[0] if cfg.serve.api_keys else None
    out = []
    try:
        for prompt in recipe.prompts:
            resp = complete(url, prompt, recipe.max_tokens, recipe.temperature, recipe.top_p, recipe.seed, api_key=key)
            text = resp["choices"][0]["text"]
            out.append({"prompt": prompt, "completion": text})
            print(f"\n>>> {prompt}\n{prompt}{text}", flush=True)
    finally:
        stop()
    return out
