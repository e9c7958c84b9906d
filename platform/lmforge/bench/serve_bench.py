"""``lmforge bench serve``: the server under a bounded load, against its engine called directly.

For each concurrency level: that many clients stream completions of ``max_tokens`` tokens for
``duration_s`` through the official ``openai`` client (TTFT and inter-token latency p50/p99, tokens/s,
requests/s, errors). In the same run, the generator alone decodes the same prompt at each batch size,
and the server's own overhead is the p50 latency of a one-token request over HTTP minus the engine's
in-process one. Ratios in the JSON: tokens/s at the highest level over one stream, and over the
generator alone at that batch.

Run: ``lmforge bench serve output=runs/bench/serve.json`` (starts a local cluster and server), or
``lmforge bench serve url=http://host:8000 model_name=... api_key=...`` for a running one.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from lmforge.bench import write_result
from lmforge.bench.config import ServeBenchConfig
from lmforge.bench.load import percentiles, run_load


def _model_dir(cfg: ServeBenchConfig) -> Path:
    if cfg.model:
        return Path(cfg.model)
    from lmforge.bench.models import prepare_models

    _, exports = prepare_models(cfg.source, cfg.work_dir, [cfg.precision], cfg.ppl_text)
    return exports[cfg.precision]


def _generator_alone(model_dir: Path, cfg: ServeBenchConfig) -> dict:
    """Decode tokens/s of the engine in this process at each batch size, and its one-token latency."""
    from lmforge.generate.engine import SamplingParams
    from lmforge.generate.onnx_generator import OnnxGenerator

    gen = OnnxGenerator(model_dir, intra_op_threads=cfg.threads)
    ids = gen.tokenizer(cfg.prompt).input_ids
    params = SamplingParams(max_tokens=cfg.max_tokens, ignore_eos=True)
    gen.generate_ids([ids], SamplingParams(max_tokens=4))  # warm-up
    out = {}
    for batch in cfg.concurrency:
        start = time.perf_counter()
        tokens = sum(len(t) for t in gen.generate_ids([ids] * batch, params))
        out[f"batch_{batch}_tokens_per_s"] = tokens / (time.perf_counter() - start)
    latencies = []
    for _ in range(cfg.short_requests):
        start = time.perf_counter()
        gen.generate_ids([ids], SamplingParams(max_tokens=1))
        latencies.append(time.perf_counter() - start)
    out["one_token_latency_s"] = percentiles(latencies)
    return out


def _short_requests(url: str, cfg: ServeBenchConfig, key: str | None) -> dict:
    """Sequential non-streamed one-token completions over HTTP: the server's latency for a short request."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key or "none", max_retries=0, timeout=60)
    client.completions.create(model=cfg.model_name, prompt=cfg.prompt, max_tokens=1)  # warm-up
    latencies = []
    for _ in range(cfg.short_requests):
        start = time.perf_counter()
        client.completions.create(model=cfg.model_name, prompt=cfg.prompt, max_tokens=1, temperature=0)
        latencies.append(time.perf_counter() - start)
    return percentiles(latencies)


def _measure(url: str, cfg: ServeBenchConfig, key: str | None) -> dict:
    levels = {}
    for concurrency in cfg.concurrency:
        extra = {"temperature": 0, "extra_body": {"min_tokens": cfg.max_tokens}}  # every request the same length
        # no retries: a request that failed is counted in the level's errors, not retried into its latency
        result = asyncio.run(run_load(url, cfg.model_name, key, concurrency=concurrency, duration_s=cfg.duration_s,
                                      prompt=cfg.prompt, max_tokens=cfg.max_tokens, stream=True, extra=extra,
                                      max_retries=0))
        levels[f"concurrency_{concurrency}"] = result.summary()
    return {"levels": levels, "short_request_latency_s": _short_requests(url, cfg, key)}


def _serve_locally(model_dir: Path, cfg: ServeBenchConfig) -> tuple[dict, dict]:
    from lmforge import config as cfgmod
    from lmforge.cluster.session import ray_session
    from lmforge.serve import server
    from lmforge.serve.config import ServeConfig
    from lmforge.stages import RayConfig

    cores = os.cpu_count() or 1
    serve_cfg = cfgmod.from_dict(ServeConfig, {"serve": {
        "port": cfg.port, "models": {cfg.model_name: str(model_dir)}, "replica_cpus": max(0.5, cores - 0.5),
        "engine": {"max_running": max(cfg.concurrency), "intra_op_threads": cfg.threads},
        "max_ongoing_requests": 4 * max(cfg.concurrency), "max_tokens_limit": max(cfg.max_tokens, 16)}})
    with ray_session(RayConfig()):
        url = server.start(serve_cfg)
        try:
            measured = _measure(url, cfg, None)
        finally:
            server.stop()
    return measured, {"replica_cpus": serve_cfg.serve.replica_cpus, "replicas": 1}


def run(cfg: ServeBenchConfig) -> dict:
    model_dir = _model_dir(cfg) if cfg.url is None else None
    if cfg.url:
        measured, setup = _measure(cfg.url, cfg, cfg.api_key), {"url": cfg.url}
        alone = _generator_alone(Path(cfg.model), cfg) if cfg.model else {}
    else:
        measured, setup = _serve_locally(model_dir, cfg)
        alone = _generator_alone(model_dir, cfg)
    top, levels = max(cfg.concurrency), measured["levels"]
    result = {"model": str(model_dir or cfg.model_name), "cores": os.cpu_count(), "max_tokens": cfg.max_tokens,
              "threads": cfg.threads, "setup": setup, **measured, "generator_alone": alone}
    one, many = levels.get("concurrency_1"), levels[f"concurrency_{top}"]
    if one:
        result[f"tokens_per_s_{top}_streams_over_1"] = many["tokens_per_s"] / one["tokens_per_s"]
    if alone:
        result[f"tokens_per_s_{top}_streams_over_generator_batch_{top}"] = (
            many["tokens_per_s"] / alone[f"batch_{top}_tokens_per_s"])
        result["server_overhead_p50_ms"] = 1000 * (measured["short_request_latency_s"]["p50"]
                                                   - alone["one_token_latency_s"]["p50"])
    return write_result(result, cfg.output)
