"""Prometheus metrics of the serving layer, through Ray's metrics agent (beside Serve's ``ray_serve_*``).

Ray exports them with a ``ray_`` prefix on every node's metrics port (``ray.metrics_export_port``), with
the replica as a label, so one scrape per node sees every replica: requests by endpoint and status, time
to first token and inter-token latency, prompt and generated tokens, running and waiting sequences.
"""

from __future__ import annotations

import time

from lmforge.serve.observer import Observer

# Latency buckets (seconds): from a fast decode step to a long prompt on a busy CPU.
TOKEN_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
REQUEST_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]


class GatewayMetrics:
    """What the HTTP front sees: every request's endpoint, model and status."""

    def __init__(self):
        from ray.util.metrics import Counter, Histogram

        self.requests = Counter("lmforge_requests_total", "HTTP requests by endpoint, model and status",
                                tag_keys=("endpoint", "model", "status"))
        self.latency = Histogram("lmforge_request_latency_seconds", "Time to the last byte of a response",
                                 boundaries=REQUEST_BUCKETS, tag_keys=("endpoint", "model"))

    def request(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "model": model, "status": str(status)})
        self.latency.observe(seconds, tags={"endpoint": endpoint, "model": model})


class ModelMetrics(Observer):
    """What a model replica sees: token timings and counts, and its engine's queue."""

    def __init__(self, model: str):
        from ray.util.metrics import Counter, Gauge, Histogram

        self.tags = {"model": model}
        self.ttft = Histogram("lmforge_time_to_first_token_seconds", "From a request's arrival to its first token",
                              boundaries=TOKEN_BUCKETS, tag_keys=("model",))
        self.itl = Histogram("lmforge_inter_token_latency_seconds", "Between two tokens of one sequence",
                             boundaries=TOKEN_BUCKETS, tag_keys=("model",))
        self.prompt_tokens = Counter("lmforge_prompt_tokens_total", "Prompt tokens processed", tag_keys=("model",))
        self.generation_tokens = Counter("lmforge_generation_tokens_total", "Tokens generated", tag_keys=("model",))
        self.finished_requests = Counter("lmforge_model_requests_total", "Requests a model replica completed",
                                         tag_keys=("model", "endpoint"))
        self.running = Gauge("lmforge_running_sequences", "Sequences in the replica's batch", tag_keys=("model",))
        self.waiting = Gauge("lmforge_waiting_sequences", "Sequences waiting for a slot", tag_keys=("model",))
        self.prefix_hits = Gauge("lmforge_prefix_cache_hit_rate", "Share of prompt tokens found in a KV cache "
                                 "slot instead of computed", tag_keys=("model",))
        self.cache_bytes = Gauge("lmforge_kv_cache_bytes", "The replica's KV cache, allocated at start",
                                 tag_keys=("model",))
        self._last_gauge = 0.0

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds, tags=self.tags)

    def next_token(self, seconds: float) -> None:
        self.itl.observe(seconds, tags=self.tags)

    def finished(self, endpoint: str, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
        self.prompt_tokens.inc(prompt_tokens, tags=self.tags)
        if completion_tokens:
            self.generation_tokens.inc(completion_tokens, tags=self.tags)
        self.finished_requests.inc(tags={**self.tags, "endpoint": endpoint})

    def engine_state(self, engine) -> None:
        """Called after every engine step (from its thread): the queue, at most twice a second."""
        now = time.monotonic()
        if now - self._last_gauge >= 0.5 or not engine.has_work():
            self._last_gauge = now
            self.running.set(engine.num_running, tags=self.tags)
            self.waiting.set(engine.num_waiting, tags=self.tags)
            self.prefix_hits.set(engine.prefix_hit_rate, tags=self.tags)
            self.cache_bytes.set(engine.cache_bytes, tags=self.tags)
