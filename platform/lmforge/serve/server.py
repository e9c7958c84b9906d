"""The ``serve`` stage's work: run the OpenAI-compatible server on Ray Serve until SIGINT/SIGTERM.

Run: ``lmforge serve model=runs/onnx serve.port=8000``, then
``curl 127.0.0.1:8000/v1/completions -d '{"prompt": "The", "max_tokens": 16}'``.

Running it again against the same cluster (``ray.address=...``, ``serve.detach=true``) with a new export
under the same name updates that model's replicas in place, without downtime; the previous export is
brought back the same way.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from lmforge.cluster.session import ray_session
from lmforge.serve.config import ServeConfig

log = logging.getLogger(__name__)

APP_NAME = "lmforge"


def base_url(cfg: ServeConfig) -> str:
    """The app's URL: host, port and route prefix (the OpenAI API is under ``/v1`` there)."""
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    return f"http://{host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"


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
    serve.run(app, name=APP_NAME, route_prefix=cfg.serve.route_prefix, blocking=False)
    url = base_url(cfg)
    wait_healthy(url, cfg.serve.startup_timeout_s)
    log.info("serve: %s up; OpenAI API at %s/v1; Prometheus metrics at %s", ", ".join(served_models(cfg)), url,
             metrics_address() or "each node's Ray metrics port")
    for name, model_dir in served_models(cfg).items():
        log.info("serve: %s: %s per replica, allocated at start", name, cache_bound(model_dir, cfg.serve.engine))
    return url


def cache_bound(model_dir: str, engine) -> str:
    """The KV cache a replica of ``model_dir`` allocates with ``engine`` settings, from the model's config."""
    import json

    from lmforge import storage
    from lmforge.generate.kv_cache import KVCache, cache_layout
    from lmforge.generate.onnx_model import context_length

    local = Path(storage.local_dir(model_dir))
    c = json.loads((local / "config.json").read_text())
    query_heads = c.get("num_attention_heads") or c["n_head"]  # GPT-2's configs name them n_*
    heads = c.get("num_key_value_heads") or query_heads
    head_dim = c.get("head_dim") or (c.get("hidden_size") or c["n_embd"]) // query_heads
    export = json.loads((local / "export.json").read_text()) if (local / "export.json").is_file() else {}
    itemsize = 1 if export.get("kv_cache") == "int8" else 4
    per_token = KVCache.bytes_per_token(2 * (c.get("num_hidden_layers") or c["n_layer"]), heads, head_dim, itemsize)
    pools = cache_layout(context_length(c), engine.max_running, engine.max_context, engine.short_context,
                         engine.long_slots)
    total = sum(n * p for n, p in pools) * per_token
    return f"KV cache {' + '.join(f'{n} x {p}' for n, p in pools)} positions = {total / 2**30:.2f} GiB"


def stop() -> None:
    """Tear down every Serve app and the Serve controller/proxies of this Ray session: the apps first,
    each replica finishing its requests (streams included, up to its graceful_shutdown_timeout_s) while
    Serve's proxies stay up to carry them, then Serve itself. ``serve.shutdown`` alone kills the proxies
    at once (Ray 2.60), cutting every stream still running."""
    import ray
    from ray import serve

    try:  # (serve.status would start a local Ray when none is connected)
        apps = list(serve.status().applications) if ray.is_initialized() else []
    except Exception:  # no Serve running (or reachable): nothing to drain
        apps = []
    for name in apps:
        serve.delete(name)  # blocks until its replicas have drained and gone
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


def run(cfg: ServeConfig) -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then shut Serve (and a local Ray) down; with
    ``serve.detach``, deploy to the cluster and return."""
    import os

    from lmforge.config import ConfigError

    if cfg.serve.detach and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        raise ConfigError("serve.detach: needs ray.address (or RAY_ADDRESS): a local cluster ends with the command")
    stopping = threading.Event()
    with ray_session(cfg.ray):
        # After ray.init, which installs its own SIGTERM handler (a C++ stack trace, then death by the
        # signal): ours asks for a clean stop instead, Serve's replicas finishing their requests.
        previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            url = start(cfg)
            if cfg.serve.detach:
                print(f"lmforge deployed to the cluster: {url}/v1", flush=True)
                return
            print(f"lmforge serving at {url}/v1 — Ctrl-C to stop", flush=True)
            try:
                while not stopping.wait(0.5):
                    pass
            finally:
                log.info("serve: shutting down; requests in flight finish first")
                stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def answer_prompts(cfg: ServeConfig, recipe) -> list[dict]:
    """A recipe's ``serve`` stage: start the server, send each of the recipe's prompts (completions) and
    questions (chat) through the ``openai`` client to every model it lists (a model exported with LoRA
    adapters lists each as ``<model>:<adapter>``), print the answers side by side, and shut the server
    down. Returns each request with its model, answer, latency and tokens/s (the recipe's report shows them)."""
    from openai import OpenAI

    for name in ("httpx", "httpx2"):  # not a line per request between the answers
        logging.getLogger(name).setLevel(logging.WARNING)
    url = start(cfg)
    client = OpenAI(base_url=f"{url}/v1", api_key=cfg.serve.api_keys[0] if cfg.serve.api_keys else "none")
    out = []
    try:
        models = [m.id for m in client.models.list().data]
        width = max(len(m) for m in models)
        sampling = dict(max_tokens=recipe.max_tokens, temperature=recipe.temperature, top_p=recipe.top_p,
                        seed=recipe.seed)
        for kind, prompt in [("completion", p) for p in recipe.prompts] + [("chat", q) for q in recipe.questions]:
            print(f"\n>>> {'(chat) ' if kind == 'chat' else ''}{prompt}", flush=True)
            for model in models:
                out.append(_ask(client, model, kind, prompt, sampling))
                shown = (prompt if kind == "completion" else "") + out[-1]["completion"]
                print(f"  [{model:<{width}}] {' '.join(shown.split())}", flush=True)
    finally:
        stop()
    return out


def _ask(client, model: str, kind: str, prompt: str, sampling: dict) -> dict:
    start_s = time.perf_counter()
    if kind == "chat":
        resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **sampling)
        text = resp.choices[0].message.content
    else:
        resp = client.completions.create(model=model, prompt=prompt, **sampling)
        text = resp.choices[0].text
    return {"model": model, **_answered(kind, prompt, text, resp.usage, start_s)}


def _answered(kind: str, prompt: str, text: str, usage, start_s: float) -> dict:
    seconds = time.perf_counter() - start_s
    tokens = usage.completion_tokens if usage else 0
    return {"kind": kind, "prompt": prompt, "completion": text, "seconds": round(seconds, 3),
            "completion_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None}
