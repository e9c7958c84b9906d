"""A bounded load generator for an OpenAI-compatible server, on the official ``openai`` client.

``concurrency`` clients each send requests back to back until ``duration_s`` (or ``requests`` in all)
is reached, streamed or not, with the client's default retries (what a user's client does) or
``max_retries`` (0: every failed request is counted, none retried away). A stream that ends without a
``finish_reason`` counts as failed too: a server that drops a stream mid-way must not pass for one that
finished it. Returns TTFT (streamed: to the first chunk with text; else the whole request), inter-token
latency, tokens/s, requests/s and every error (with when its request started and failed), with p50/p99.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

for _name in ("httpx", "httpx2", "openai"):  # one INFO line per request would bury the results
    logging.getLogger(_name).setLevel(logging.WARNING)


@dataclass
class LoadResult:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # whole request
    ttfts: list[float] = field(default_factory=list)
    itls: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    failures: list[tuple[float, float]] = field(default_factory=list)  # each failed request's (start, end)

    def summary(self) -> dict:
        return {"requests": self.requests, "tokens": self.tokens, "errors": len(self.errors),
                "error_samples": self.errors[:5],
                "seconds": round(self.seconds, 2), "requests_per_s": self.requests / max(self.seconds, 1e-9),
                "tokens_per_s": self.tokens / max(self.seconds, 1e-9),
                "latency_s": percentiles(self.latencies), "ttft_s": percentiles(self.ttfts),
                "inter_token_latency_s": percentiles(self.itls)}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "mean": None}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"p50": pick(0.5), "p99": pick(0.99), "mean": sum(ordered) / len(ordered)}


async def _one(client, model: str, prompt: str, max_tokens: int, stream: bool, result: LoadResult,
               extra: dict) -> None:
    start = time.perf_counter()
    try:
        if not stream:
            resp = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, **extra)
            result.tokens += resp.usage.completion_tokens
            result.ttfts.append(time.perf_counter() - start)
        else:
            last, finished = None, False
            chunks = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, stream=True,
                                                     stream_options={"include_usage": True}, **extra)
            async for chunk in chunks:
                now = time.perf_counter()
                if chunk.choices and chunk.choices[0].text:
                    if last is None:
                        result.ttfts.append(now - start)
                    else:
                        result.itls.append(now - last)
                    last = now
                finished = finished or bool(chunk.choices and chunk.choices[0].finish_reason)
                if chunk.usage is not None:
                    result.tokens += chunk.usage.completion_tokens
            if not finished:
                raise ConnectionError("the stream ended without a finish_reason")
        result.latencies.append(time.perf_counter() - start)
        result.requests += 1
    except Exception as e:  # every failure the client saw after its retries
        result.errors.append(f"{type(e).__name__}: {str(e)[:200]}")
        result.failures.append((start, time.perf_counter()))


async def run_load(url: str, model: str | list[str], api_key: str | None = None, concurrency: int = 8,
                   duration_s: float = 30, requests: int | None = None, prompt: str = "The history of the city",
                   max_tokens: int = 32,
                   stream: bool = True, extra: dict | None = None, timeout_s: float = 120,
                   max_retries: int | None = None, until: Callable[[], bool] | None = None) -> LoadResult:
    """Drive ``url`` (``http://host:port``) with ``concurrency`` clients; see the module docstring. Several
    ``model`` names: client ``i`` asks for the ``i``-th, round robin (e.g. mixed LoRA adapters). With
    ``until``, the load goes on past ``duration_s`` until it returns True (a test's events, on a slow host)."""
    import openai

    retries = {} if max_retries is None else {"max_retries": max_retries}  # None: the client's own default
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key or "none", timeout=timeout_s, **retries)
    result, deadline = LoadResult(), time.perf_counter() + duration_s
    sent = 0

    models = [model] if isinstance(model, str) else model

    async def worker(name: str) -> None:
        nonlocal sent
        while (time.perf_counter() < deadline or (until is not None and not until())) and \
                (requests is None or sent < requests):
            sent += 1
            await _one(client, name, prompt, max_tokens, stream, result, extra or {"temperature": 0})

    start = time.perf_counter()
    await asyncio.gather(*(worker(models[i % len(models)]) for i in range(concurrency)))
    result.seconds = time.perf_counter() - start
    await client.close()
    return result
