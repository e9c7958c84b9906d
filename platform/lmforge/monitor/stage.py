"""The ``monitor`` command's entry (the contract: :mod:`lmforge.stages`): watch a running deployment.

Run: ``lmforge monitor endpoint=http://127.0.0.1:8000/v1 tasks=[boolq] request_log=runs/requests
output=runs/monitor`` (Prometheus scrapes ``:9108/metrics``; ``infra/prometheus/lmforge-alerts.yaml``
holds alert rules on what it exports).

Every ``interval_s``: the probe set evaluated through the endpoint (:mod:`.probe`), each figure a gauge
``lmforge_quality{task,metric,model,version}`` and a line of ``quality.jsonl``; the request log's latest
``window`` requests against the reference window (:mod:`.traffic`): ``lmforge_traffic_drift{model,feature}``
(PSI), ``lmforge_traffic_drift_score``, ``lmforge_traffic_drifted`` (score over ``drift_threshold``),
``lmforge_traffic_error_rate``, ``lmforge_traffic_finish_share{reason}``, ``lmforge_traffic_language_share
{language}``, mean lengths, and a line of ``traffic.jsonl``. A probe during which the served version
changed is recorded but sets no gauge (its examples were answered by two models).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path

from lmforge.monitor.config import MonitorConfig as Config

log = logging.getLogger("lmforge.monitor")

SUMMARY = "watch a deployment: a probe set through its API and its traffic's drift, as Prometheus gauges"


def run(cfg: Config) -> dict:
    from lmforge.monitor.probe import served

    served(cfg.endpoint, cfg.api_key_env)  # a deployment that does not answer: refused before anything
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    gauges = Gauges(cfg.metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    last: dict = {}
    first = _rounds_recorded(out)  # a restarted monitor numbers its rounds on
    n = first
    while not stop.is_set():
        started = time.monotonic()
        last = one_round(cfg, out, n, gauges)
        n += 1
        if cfg.rounds and n - first >= cfg.rounds:
            break
        stop.wait(max(0.0, cfg.interval_s - (time.monotonic() - started)))
    gauges.close()
    return last


def one_round(cfg: Config, out: Path, n: int, gauges: Gauges) -> dict:
    """A probe and a traffic reading, recorded and exported; returns both."""
    from lmforge.monitor.probe import run_probe

    now = time.time()
    probe = run_probe(cfg.endpoint, cfg.tasks, out / "rounds" / f"{n:05d}", max_examples=cfg.max_examples,
                      chat=cfg.chat, bootstrap=cfg.bootstrap, tokenizer=cfg.tokenizer, api_key_env=cfg.api_key_env)
    quality = {"time": now, "round": n, **probe}
    _append(out / "quality.jsonl", quality)
    if not probe["changed"]:
        gauges.quality(probe)
    log.info("monitor: round %d, %s %s: %s", n, probe["model"], probe["version"], json.dumps(probe["metrics"]))
    result = {"quality": quality}
    if cfg.request_log:
        traffic = {"time": now, "round": n, "model": probe["model"], **read_traffic(cfg)}
        _append(out / "traffic.jsonl", traffic)
        gauges.traffic(traffic)
        drift = traffic["drift"]
        log.info("monitor: traffic drift %.3f (%s)%s", drift["score"], json.dumps(drift["features"]),
                 " DRIFTED" if traffic["drifted"] else "")
        result["traffic"] = traffic
    return result


def read_traffic(cfg: Config) -> dict:
    """The current window's statistics and its drift from the reference."""
    from lmforge.monitor import traffic
    from lmforge.serve import request_log

    records = users(request_log.read(cfg.request_log))
    reference = users(request_log.read(cfg.reference)) if cfg.reference else records[: cfg.window]
    current = records[-cfg.window:]
    drift = traffic.drift(reference, current)
    return {"current": traffic.stats(current), "reference": traffic.stats(reference), "drift": drift,
            "drifted": drift["score"] > cfg.drift_threshold, "threshold": cfg.drift_threshold}


def users(records: list[dict]) -> list[dict]:
    """The users' requests: evaluations' and probes' own (``user`` lmforge-eval) left out."""
    from lmforge.evaluate.endpoint import EVAL_USER

    return [r for r in records if r.get("user") != EVAL_USER]


class Gauges:
    """The monitor's Prometheus gauges, on their own registry and port."""

    def __init__(self, port: int | None):
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry()

        def gauge(name: str, text: str, labels: tuple[str, ...]) -> Gauge:
            return Gauge(name, text, labels, registry=self.registry)

        self.q = gauge("lmforge_quality", "A probe metric of the deployed model",
                       ("task", "metric", "model", "version"))
        self.q_time = gauge("lmforge_quality_timestamp_seconds", "When the last probe ran", ("model", "version"))
        self.drift = gauge("lmforge_traffic_drift", "PSI of a traffic feature, current vs reference window",
                           ("model", "feature"))
        self.score = gauge("lmforge_traffic_drift_score", "The largest feature PSI", ("model",))
        self.drifted = gauge("lmforge_traffic_drifted", "1 when the drift score is over its threshold", ("model",))
        self.errors = gauge("lmforge_traffic_error_rate", "Refused or failed requests in the current window",
                            ("model",))
        self.finish = gauge("lmforge_traffic_finish_share", "Share of requests by finish reason", ("model", "reason"))
        self.language = gauge("lmforge_traffic_language_share", "Share of prompts by language", ("model", "language"))
        self.length = gauge("lmforge_traffic_mean_tokens", "Mean prompt / completion tokens", ("model", "kind"))
        self._share_keys: dict[tuple[int, str], set[str]] = {}
        self.server = None
        if port is not None:
            from prometheus_client import start_http_server

            self.server, self.thread = start_http_server(port, registry=self.registry)

    def quality(self, probe: dict) -> None:
        self.q.clear()  # a metric the probe set no longer has, or an old version, is not reported on
        for key, value in probe["metrics"].items():
            task, metric = key.split(".", 1)
            self.q.labels(task, metric, probe["model"], str(probe["version"])).set(value)
        self.q_time.labels(probe["model"], str(probe["version"])).set(time.time())

    def traffic(self, t: dict) -> None:
        model, current = t["model"], t["current"]
        for name, value in t["drift"]["features"].items():
            self.drift.labels(model, name).set(value)
        self.score.labels(model).set(t["drift"]["score"])
        self.drifted.labels(model).set(float(t["drifted"]))
        self.errors.labels(model).set(current["error_rate"])
        self._shares(self.finish, model, current["finish"])
        self._shares(self.language, model, current["languages"])
        for kind in ("prompt_tokens", "completion_tokens"):
            self.length.labels(model, kind).set(current[kind]["mean"])

    def _shares(self, gauge, model: str, shares: dict[str, float]) -> None:
        """Set each share; one the current window no longer has goes to 0 rather than keep an old round's value."""
        known = self._share_keys.setdefault((id(gauge), model), set())
        known |= set(shares)
        for key in known:
            gauge.labels(model, key).set(shares.get(key, 0.0))

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def _append(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _rounds_recorded(out: Path) -> int:
    path = out / "quality.jsonl"
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else 0
