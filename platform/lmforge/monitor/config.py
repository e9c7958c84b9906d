"""Config of ``lmforge monitor``."""

from __future__ import annotations

import dataclasses

from lmforge.config import check
from lmforge.evaluate.config import TaskSpec


@dataclasses.dataclass(kw_only=True)
class MonitorConfig:
    """output: quality.jsonl and traffic.jsonl (a line per round), rounds/<n>/ (each probe's eval output)."""

    endpoint: str  # the deployment's OpenAI API, e.g. http://127.0.0.1:8000/v1 (lmforge serve)
    output: str  # a local dir: the time series and every probe's eval output
    # the probe set, evaluated through the endpoint every round: built-in tasks or {name, data, metrics}
    # JSONL tasks, as `lmforge eval` takes them
    tasks: list[str | TaskSpec] = dataclasses.field(default_factory=lambda: ["boolq"])
    max_examples: int = 50  # per task, the same examples every round
    chat: bool = False  # prompts as a user turn of the model's chat template
    bootstrap: int = 200  # resamples for each probe metric's 95% interval
    # the served model's tokenizer (an HF or export dir); default: the served export's dir, from /v1/models
    tokenizer: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the deployment's API key
    interval_s: float = 300.0  # between the starts of two rounds
    rounds: int = 0  # rounds to run, then exit; 0: until stopped (SIGINT/SIGTERM)
    # Prometheus gauges (lmforge_quality{task,metric,model,version}, lmforge_traffic_*) served on this port
    # at /metrics; null: none
    metrics_port: int | None = 9108
    request_log: str | None = None  # the deployment's serve.request_log dir; null: no traffic statistics
    # the reference traffic: a request log dir recorded earlier; default: the first `window` requests logged
    reference: str | None = None
    window: int = 200  # the current window: the latest this many requests
    drift_threshold: float = 0.25  # PSI of any feature above which traffic has drifted (0.25: a shift)

    def __post_init__(self):
        check(self.endpoint.startswith(("http://", "https://")), "endpoint", "must be an http(s):// URL")
        check(len(self.tasks) > 0, "tasks", "needs at least one probe task")
        check(self.max_examples >= 1 and self.window >= 1, "max_examples", "max_examples and window must be >= 1")
        check(self.interval_s > 0 and self.rounds >= 0, "interval_s", "interval_s must be > 0, rounds >= 0")
