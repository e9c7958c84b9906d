"""``lmforge bench serve``: the server under a bounded load, against its engine called directly.

For each concurrency level: that many clients stream completions of ``max_tokens`` tokens for
``duration_s`` through the official ``openai`` client (TTFT and inter-token latency p50/p99, tokens/s,
requests/s, errors). In the same run, the generator alone decodes the same prompt at each batch size,
and the server's own overhead is the p50 latency of a one-token request over HTTP minus the engine's
in-process one. Ratios in the JSON: tokens/s at the highest level over one stream, and over the
generator alone at that batch.

With ``llama_server`` (the binary) and ``llama_gguf``, llama.cpp's server runs beside ours with one
slot per stream and the same threads, and every level is measured on both, alternating, ``rounds``
times: the ratio of tokens/s and both p99 latencies land in the JSON. ``prompt_tokens`` makes every
prompt that long (long contexts).

Run: ``lmforge bench serve output=runs/bench/serve.json`` (starts a local cluster and server), or
``lmforge bench serve url=http://host:8000 model_name=... api_key=...`` for a running one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from lmforge.bench import lora_bench, write_result
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
    out["prefix_reuse"] = _prefix_reuse(model_dir, cfg)
    return out


def _prefix_reuse(model_dir: Path, cfg: ServeBenchConfig, prefix_tokens: int = 512) -> dict:
    """Time to first token of a prompt whose first ``prefix_tokens`` an earlier request left in a slot,
    against a cold prompt of the same length (engine in process, median of 5 each)."""
    from lmforge.generate.engine import Engine, SamplingParams
    from lmforge.generate.onnx_model import OnnxModel

    model = OnnxModel(model_dir, intra_op_threads=cfg.threads)
    engine = Engine(model, max_running=4, max_prefill_tokens=2048)
    prefix_tokens = min(prefix_tokens, engine.max_context - 40)  # a small test model's context is short
    words = model.tokenizer((cfg.prompt + ". ") * prefix_tokens).input_ids

    def ttft(ids: list[int]) -> float:
        start = time.perf_counter()
        engine.add(str(start), ids, SamplingParams(max_tokens=1))
        while engine.has_work():
            engine.step()
        return time.perf_counter() - start

    cold, warm = [], []
    for i in range(6):
        prefix = [words[0] + i] + words[1:prefix_tokens]  # a first token no slot holds: nothing to reuse
        cold.append(ttft(prefix + words[:16]))
        warm.append(ttft(prefix + words[16:32]))  # shares the 512 tokens just computed
    cold, warm = sorted(cold[1:])[2], sorted(warm[1:])[2]  # the first round warms onnxruntime up
    return {"prefix_tokens": prefix_tokens, "ttft_cold_s": cold, "ttft_shared_prefix_s": warm,
            "ratio": warm / cold, "hit_rate": engine.prefix_hit_rate}


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


def _level(url: str, cfg: ServeBenchConfig, key: str | None, concurrency: int, prompt: str, peer: bool) -> dict:
    # every request the same length: our min_tokens, llama-server's ignore_eos
    extra = {"temperature": 0, "extra_body": {"ignore_eos": True} if peer else {"min_tokens": cfg.max_tokens}}
    # no retries: a request that failed is counted in the level's errors, not retried into its latency
    result = asyncio.run(run_load(url, cfg.model_name, key, concurrency=concurrency, duration_s=cfg.duration_s,
                                  prompt=prompt, max_tokens=cfg.max_tokens, stream=cfg.stream, extra=extra,
                                  max_retries=0))
    return result.summary()


def _measure(url: str, cfg: ServeBenchConfig, key: str | None, peer_url: str | None = None) -> dict:
    prompt = _prompt(cfg)
    levels, peer = {}, {}
    for _ in range(cfg.rounds):
        for concurrency in cfg.concurrency:
            name = f"concurrency_{concurrency}"
            levels.setdefault(name, []).append(_level(url, cfg, key, concurrency, prompt, peer=False))
            if peer_url:
                peer.setdefault(name, []).append(_level(peer_url, cfg, None, concurrency, prompt, peer=True))
    out = {"levels": {k: _best(v) for k, v in levels.items()},
           "short_request_latency_s": _short_requests(url, cfg, key)}
    if cfg.structured:
        out["structured_output"] = _structured(url, cfg, key)
    if cfg.adapters:
        out["adapters"] = lora_bench.mixed(url, cfg, key, prompt)
    if peer_url:
        out["llama_server"] = {k: _best(v) for k, v in peer.items()}
        out["vs_llama_server"] = {k: {"tokens_per_s_ratio": out["levels"][k]["tokens_per_s"] / p["tokens_per_s"],
                                      "latency_p99_s": [out["levels"][k]["latency_s"]["p99"], p["latency_s"]["p99"]]}
                                  for k, p in out["llama_server"].items()}
    return out


# bounded strings and numbers: a small model inside a free string can run on past any max_tokens
STRUCTURED_SCHEMA = {"type": "object", "additionalProperties": False,
                     "required": ["city", "country", "population_thousands", "landmarks"],
                     "properties": {"city": {"type": "string", "maxLength": 32},
                                    "country": {"type": "string", "maxLength": 32},
                                    "population_thousands": {"type": "integer", "minimum": 0, "maximum": 99999},
                                    "landmarks": {"type": "array", "maxItems": 3,
                                                  "items": {"type": "string", "maxLength": 32}}}}
STRUCTURED_MAX_TOKENS = 160  # room for the object (a request the grammar has not finished is not valid JSON)
CONTINENT = {"Seoul": "Asia", "Busan": "Asia", "Paris": "Europe", "Tokyo": "Asia", "Cairo": "Africa",
             "Lima": "South America", "Oslo": "Europe", "Madrid": "Europe", "Nairobi": "Africa", "Hanoi": "Asia"}
CITIES = list(CONTINENT)


def _structured(url: str, cfg: ServeBenchConfig, key: str | None) -> dict:
    """Chat requests constrained three ways through the ``openai`` client (a JSON schema, a regex, a
    choice): how many answers are valid, and the top level's tokens/s with the schema on every request
    against the same level without (same run)."""
    import re

    import jsonschema
    import openai

    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": STRUCTURED_SCHEMA, "strict": True}}
    date = r"(1[0-9]|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"

    def schema_valid(text: str) -> bool:
        try:
            jsonschema.validate(json.loads(text), STRUCTURED_SCHEMA)
            return True
        except (ValueError, jsonschema.ValidationError):
            return False

    kinds = {  # name: (question about a city, request fields, is the answer valid)
        "json_schema": ("Describe {} as JSON: city, country, population, landmarks.", {"response_format": fmt},
                        schema_valid),
        "regex": ("When was {} founded? Answer with a date.", {"extra_body": {"guided_regex": date}},
                  lambda t: re.fullmatch(date, t) is not None),
        "choice": ("Which continent is {} in?", {"extra_body": {"guided_choice": sorted(set(CONTINENT.values()))}},
                   lambda t: t in CONTINENT.values())}
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key or "none", max_retries=0, timeout=120)
    validity = {}
    for name, (question, fields, valid) in kinds.items():
        counts, examples = {"valid": 0, "finished_by_grammar": 0, "right": 0}, []
        for i in range(cfg.structured_prompts):
            city = CITIES[i % len(CITIES)]
            resp = client.chat.completions.create(model=cfg.model_name, max_tokens=STRUCTURED_MAX_TOKENS,
                                                  temperature=0.7, seed=i, **fields,
                                                  messages=[{"role": "user", "content": question.format(city)}])
            text = resp.choices[0].message.content
            counts["valid"] += valid(text)
            counts["finished_by_grammar"] += resp.choices[0].finish_reason == "stop"
            counts["right"] += name == "choice" and text == CONTINENT[city]
            examples += [text] if i < 2 else []
        validity[name] = {"prompts": cfg.structured_prompts, **counts, "examples": examples}
    top = max(cfg.concurrency)
    prompt = "Describe Seoul as JSON: city, country, population, landmarks.\n"

    def level(max_tokens: int, extra: dict) -> dict:
        return asyncio.run(run_load(url, cfg.model_name, key, concurrency=top, duration_s=cfg.duration_s, prompt=prompt,
                                    max_tokens=max_tokens, stream=cfg.stream, extra=extra, max_retries=0)).summary()

    levels = {"json_schema": level(STRUCTURED_MAX_TOKENS, {"temperature": 0, "extra_body": {"response_format": fmt}})}
    # the same number of tokens per request without the schema: a grammar that ends requests sooner would
    # otherwise look slower for their prefill and HTTP, not for its masks
    n = max(1, round(levels["json_schema"]["tokens"] / max(levels["json_schema"]["requests"], 1)))
    levels["plain"] = level(n, {"temperature": 0, "extra_body": {"min_tokens": n}})
    return {"validity": validity, f"concurrency_{top}": levels,
            "tokens_per_s_ratio": levels["json_schema"]["tokens_per_s"] / levels["plain"]["tokens_per_s"]}


def _best(rounds: list[dict]) -> dict:
    """The median round by tokens/s, with every round's tokens/s beside it."""
    ordered = sorted(rounds, key=lambda r: r["tokens_per_s"])
    return {**ordered[len(ordered) // 2], "rounds_tokens_per_s": [r["tokens_per_s"] for r in rounds]}


def _prompt(cfg: ServeBenchConfig) -> str:
    """The prompt, repeated to about ``prompt_tokens`` tokens when asked (four characters a token is
    close for English with SmolLM2's tokenizer; the server reports the exact count)."""
    if not cfg.prompt_tokens:
        return cfg.prompt
    text = cfg.prompt + ". "
    return (text * (4 * cfg.prompt_tokens // len(text) + 1))[: 4 * cfg.prompt_tokens]


@contextlib.contextmanager
def _llama_server(cfg: ServeBenchConfig):
    """llama.cpp's server on the next port: one slot per stream, the same threads; yields its URL."""
    if not cfg.llama_server:
        yield None
        return
    slots, port = max(cfg.concurrency), cfg.port + 1
    context = slots * ((cfg.prompt_tokens or 64) + cfg.max_tokens + 64)
    proc = subprocess.Popen([cfg.llama_server, "-m", cfg.llama_gguf, "--host", "127.0.0.1", "--port", str(port),
                             "-t", str(cfg.threads), "--parallel", str(slots), "-c", str(context), "--no-webui",
                             *cfg.llama_server_args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not start (exit code {proc.poll()})")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _serve_locally(model_dir: Path, cfg: ServeBenchConfig) -> tuple[dict, dict]:
    from lmforge import config as cfgmod
    from lmforge.cluster.session import ray_session
    from lmforge.serve import server
    from lmforge.serve.config import ServeConfig
    from lmforge.stages import RayConfig

    cores = os.cpu_count() or 1
    max_tokens = max(cfg.max_tokens, STRUCTURED_MAX_TOKENS if cfg.structured else 0)
    serve_cfg = cfgmod.from_dict(ServeConfig, {"serve": {
        "port": cfg.port, "models": {cfg.model_name: str(model_dir)}, "replica_cpus": max(0.5, cores - 0.5),
        "engine": {"max_running": max(cfg.concurrency), "intra_op_threads": cfg.threads,
                   "short_context": (cfg.prompt_tokens or 64) + max_tokens + 64},
        "max_ongoing_requests": 4 * max(cfg.concurrency), "max_tokens_limit": max(max_tokens, 16)}})
    with ray_session(RayConfig()):
        url = server.start(serve_cfg)
        try:
            with _llama_server(cfg) as peer_url:
                measured = _measure(url, cfg, None, peer_url)
            rss = lora_bench.replica_rss_bytes()
        finally:
            server.stop()
    return measured, {"replica_cpus": serve_cfg.serve.replica_cpus, "replicas": 1, "replica_rss_bytes": rss}


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
    if cfg.merged_model and cfg.url is None:  # the same top level on the merged model, served alone
        alone_cfg = dataclasses.replace(cfg, concurrency=[top], adapters=[], merged_model=None, structured=False,
                                        llama_server=None, short_requests=1)
        merged, merged_setup = _serve_locally(Path(cfg.merged_model), alone_cfg)
        result["adapters"]["vs_merged"] = lora_bench.compare(result, {**merged, "setup": merged_setup}, model_dir, cfg)
    return write_result(result, cfg.output)
