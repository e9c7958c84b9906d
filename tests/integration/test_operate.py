"""Operating a live deployment on the session cluster: ``lmforge monitor`` (probe gauges equal to an eval of
the same probe set; a planted traffic shift raises the drift score, unchanged traffic does not) and
``lmforge update`` (useful new data promoted under load with no failed request; damaged data refused by
the gate with the reason in the registry; a broken export rolled back after its post-switch probe; bad
input refused before anything trains).

The model: the tiny Llama, fine-tuned to answer which animal a sentence names (a copy its two layers learn
in seconds: held-out perplexity of the answer ~1.02, against ~81 before). Fine-tuning on more of the same
keeps it (~1.00); on answers shuffled across prompts it loses it (~2.6): the gate's margin of 0.5 lies
between.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from lmforge import config as cfgmod
from lmforge.config import ConfigError
from lmforge.stages import STAGES
from tests.conftest import make_learned_model
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

KEY = "sk-operate-test"
KEY_ENV = "LMFORGE_OPERATE_TEST_KEY"
NAME = "animals"
ANIMALS = ["cat", "dog", "horse", "cow", "fish", "bird", "lion", "bear", "wolf", "fox", "deer", "duck", "goat",
           "pig", "sheep", "mouse"]
PLACES = ["river", "house", "tree", "road", "wall", "door", "field", "lake"]
COLORS = ["red", "blue", "green", "old", "big", "small", "white", "dark"]


def _rows(n: int, seed: int, shuffled: bool = False) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, p, c = rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(COLORS)
        rows.append({"prompt": f"The {a} sat by the {c} {p}. Which animal sat there?", "response": a})
    if shuffled:  # damaged: every answer belongs to another prompt
        answers = [r["response"] for r in rows]
        rng.shuffle(answers)
        rows = [{**r, "response": x} for r, x in zip(rows, answers)]
    return rows


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _run(stage: str, section: dict):
    return STAGES[stage].run_fn()(cfgmod.from_dict(STAGES[stage].config_class(), section, stage))


@pytest.fixture(scope="module")
def live(ray_cluster, tmp_path_factory):
    """v1 (fine-tuned on 300 examples, exported) served as ``animals`` with a request log."""
    from lmforge.serve import server

    root = tmp_path_factory.mktemp("operate")
    data = {name: _write(root / f"{name}.jsonl", _rows(n, seed, shuffled=name == "damaged"))
            for name, n, seed in (("v1", 300, 1), ("useful", 300, 2), ("damaged", 300, 3), ("more", 300, 4),
                                  ("probe", 40, 9))}
    base = make_learned_model(root / "base")
    _run("finetune", {"data": data["v1"], "model": {"init_from": str(base)}, "output": str(root / "v1"),
                      **FINETUNE, "train": {**FINETUNE["train"], "max_steps": 80}})
    export = _run("export", {"model": str(root / "v1" / "model"), "output": str(root / "v1-export")})
    port = free_port()
    serve = {"serve": {"port": port, "api_keys": [KEY], "request_log": str(root / "requests"), "replica_cpus": 0.5,
                       "max_tokens_limit": 16, "engine": {"max_running": 8, "intra_op_threads": 1},
                       "autoscaling": {"min_replicas": 1, "max_replicas": 1}}}
    from lmforge.update.switch import serve_config

    server.start(serve_config(serve, str(export), {"address": ray_cluster}, NAME))
    os.environ[KEY_ENV] = KEY
    try:
        yield {"root": root, "data": data, "serve": serve, "url": f"http://127.0.0.1:{port}/v1", "ray": ray_cluster,
               "export": str(export), "requests": root / "requests"}
    finally:
        server.stop()


FINETUNE = {"finetune": {"method": "full", "max_seq_len": 64},
            "train": {"num_workers": 0, "max_steps": 30, "micro_batch_size": 16, "lr": 0.003, "warmup_steps": 5,
                      "eval_every": 30, "checkpoint_every": 30, "log_every": 10}}
PROBE_TASK = {"name": NAME, "metrics": ["perplexity"], "max_tokens": 4}


def _client(url: str, retries: int = 0):
    import openai

    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=retries, timeout=60)


def _chat(url: str, prompts: list[str]) -> None:
    client = _client(url)
    for p in prompts:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": p}], max_tokens=4,
                                       temperature=0)


def _version(url: str) -> str:
    return _client(url).models.list().data[0].model_extra["version"]


def _gauges(port: int) -> dict[str, float]:
    """``{'name{labels}': value}`` from a Prometheus text page."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("lmforge_")}


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(400)
def test_monitor_gauges_equal_an_eval_of_the_probe_set_and_a_traffic_shift_raises_drift(live, tmp_path):
    """The monitor as users run it (a process beside the deployment): its lmforge_quality gauge equals an
    `lmforge eval` of the same probe set through the same endpoint; the same 30 English prompts sent twice
    leave the drift score at ~0, and 30 Korean prompts twice as long after them push it over its threshold (the
    monitor's own probe requests are not counted as traffic)."""
    url, probe = live["url"], {**PROBE_TASK, "data": live["data"]["probe"]}
    english = [f"The {p}, {i}" for i, p in enumerate(PLACES * 4)][:30]  # ~20 tokens with the chat template
    _chat(url, english)
    _chat(url, english)  # unchanged traffic: the reference window (first 30) and the current (last 30) alike
    port = free_port()
    cmd = [sys.executable, "-m", "lmforge", "monitor", f"endpoint={url}", f"tasks=[{json.dumps(probe)}]",
           "max_examples=20", "chat=true", "bootstrap=0", "interval_s=2", f"metrics_port={port}",
           f"request_log={live['requests']}", "window=30", f"output={tmp_path / 'monitor'}", f"api_key_env={KEY_ENV}"]
    log = tmp_path / "monitor.log"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))

    def gauges(*keys: str) -> dict | None:
        assert proc.poll() is None, log.read_text()[-3000:]  # the monitor died
        return _gauges_or_none(port, *keys)

    try:
        quality_key = f'lmforge_quality{{metric="perplexity",model="{NAME}",task="{NAME}",version="{_version(url)}"}}'
        drifted_key = f'lmforge_traffic_drifted{{model="{NAME}"}}'
        # a round sets the probe's gauges, then the traffic's: a scrape between them sees the first only
        first = _wait_for(lambda: gauges(quality_key, drifted_key), 180, "the monitor's first round")
        assert first[drifted_key] == 0.0
        assert first[f'lmforge_traffic_drift_score{{model="{NAME}"}}'] < 0.05
        evaluated = _run("eval", {"model": url, "tokenizer": live["export"], "tasks": [probe], "max_examples": 20,
                                  "chat": True, "bootstrap": 0, "engine": "local", "api_key_env": KEY_ENV,
                                  "output": str(tmp_path / "eval")})
        scores = json.loads((Path(str(evaluated)) / "eval.json").read_text())
        assert first[quality_key] == pytest.approx(scores[NAME]["perplexity"], rel=1e-9)
        korean = [f"어느 동물이 {p} 옆에? {i}" for i, p in enumerate(["강", "집", "숲"] * 10)]  # ~40 tokens
        _chat(url, korean)
        # a round may read the log while the Korean prompts are still arriving (CI saw one with 4 of 30 in it):
        # the check is on the first round whose window holds only the new traffic
        korean_key = f'lmforge_traffic_language_share{{language="ko",model="{NAME}"}}'
        drifted = _wait_for(lambda: (g := gauges(quality_key, drifted_key, korean_key)) and g[korean_key] == 1.0 and g,
                            60, "a round over the Korean traffic only")
        assert drifted[drifted_key] == 1.0
        assert drifted[f'lmforge_traffic_drift{{feature="language",model="{NAME}"}}'] > 0.25
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-3000:]
    rounds = [json.loads(line) for line in (tmp_path / "monitor" / "quality.jsonl").read_text().splitlines()]
    assert len(rounds) >= 2 and all(r["metrics"][f"{NAME}.perplexity"] == rounds[0]["metrics"][f"{NAME}.perplexity"]
                                    for r in rounds)


def _gauges_or_none(port: int, *keys: str) -> dict | None:
    """The monitor's gauges once every one of ``keys`` is there (None before, or before it listens)."""
    try:
        found = _gauges(port)
    except requests.ConnectionError:
        return None
    return found if all(k in found for k in keys) else None


def _update(live, tmp_path, data: str, **keys) -> dict:
    task = {**PROBE_TASK, "data": live["data"]["probe"]}
    section = {"registry": str(live["root"] / "registry.jsonl"), "output": str(tmp_path / "update"), "data": data,
               "trained_on": [live["data"]["v1"]], "serve": live["serve"], "finetune": FINETUNE,
               "eval": {"tasks": [task], "chat": True, "engine": "local", "bootstrap": 200},
               "gate": {"metrics": {f"{NAME}.perplexity": 0.5}}, "export": {},
               "probe": {"tasks": [task], "max_examples": 20, "chat": True, "max_drop": 0.5},
               "api_key_env": KEY_ENV, "ray": {"address": live["ray"]}, **keys}
    return _run("update", section)


class _Load:
    """Clients with the openai client's default retries (2, as applications run it), sending chat requests
    until stopped: every request that still fails counts. (Without retries, one CI run saw one 500 in
    3,132 requests during an update; its cause is not found yet.)"""

    def __init__(self, url: str, clients: int = 3):
        self.url, self.ok, self.failed, self.stop = url, 0, [], threading.Event()
        self.slowest = 0.0  # seconds: with one replica, requests wait while Serve replaces it
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        client = _client(self.url, retries=2)
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Which animal?"}],
                                               max_tokens=4)
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure is what the test counts
                self.failed.append(repr(e))
            self.slowest = max(self.slowest, time.perf_counter() - start)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


@pytest.mark.timeout(400)
def test_useful_data_is_promoted_under_load_and_damaged_data_is_refused(live, tmp_path):
    """Useful new data (its examples v1 already saw dropped first) passes the gate and the deployment rolls
    to the new version while 3 clients (the openai client's default retries) see no failed request; then
    shuffled answers are refused by the gate, the served version stays, and the registry says why."""
    from lmforge import cli
    from lmforge.update.registry import Registry

    before = _version(live["url"])
    with _Load(live["url"]) as load:
        result = _update(live, tmp_path / "useful", live["data"]["useful"])
    assert result["outcome"] == "promoted", result
    assert result["data"]["already_trained_on"] > 0 and result["data"]["kept"] > 200
    assert _version(live["url"]) == result["candidate"] != before
    print(f"update under load: {load.ok} requests answered, {len(load.failed)} failed, slowest {load.slowest:.1f} s")
    assert load.failed == [] and load.ok > 10, (load.ok, load.failed[:3])
    registry = Registry(str(live["root"] / "registry.jsonl"))
    assert registry.get(before)["status"] == "replaced" and registry.live()["version"] == result["candidate"]
    assert registry.get(result["candidate"])["parent"] == before
    report = (tmp_path / "useful" / "update" / "report.md").read_text()
    assert "Outcome: **promoted**" in report and f"| {result['candidate']} | live |" in report
    events = len(registry.events())
    assert _update(live, tmp_path / "useful", live["data"]["useful"]) == result  # a rerun redoes nothing
    assert len(registry.events()) == events

    refused = _update(live, tmp_path / "damaged", live["data"]["damaged"])
    assert refused["outcome"] == "refused" and f"{NAME}.perplexity" in refused["reason"]
    assert _version(live["url"]) == result["candidate"]  # nothing switched
    entry = [v for v in registry.versions() if v["status"] == "refused"]
    assert len(entry) == 1 and "could be worse" in entry[0]["history"][-1]["reason"]
    assert not (tmp_path / "damaged" / "update" / "export").exists()
    assert f"| {NAME}.perplexity |" in (report := (tmp_path / "damaged" / "update" / "report.md").read_text())
    assert "| **no** |" in report and "| refused |" in report
    assert cli.main(["models", "list", f"registry={registry.uri}"]) == 0


@pytest.mark.timeout(400)
def test_a_broken_export_is_rolled_back_after_its_probe(live, tmp_path):
    """A candidate that passes the gate, exported (update until=export), then broken on purpose (its
    embedding zeroed, so every next token is equally likely); the rerun switches to it, its probe's
    perplexity is far worse than before the switch, and the previous version serves again."""
    import onnx
    from onnx import numpy_helper

    from lmforge.update.registry import Registry

    live_before = _version(live["url"])
    staged = _update(live, tmp_path, live["data"]["more"], until="export")
    assert staged["outcome"] == "exported (until=export)"
    path = tmp_path / "update" / "export" / "model.onnx"
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if "embed" in init.name:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0.0, init.name))
    onnx.save(model, str(path))
    result = _update(live, tmp_path, live["data"]["more"])
    assert result["outcome"] == "rolled_back", result
    assert _version(live["url"]) == live_before
    by = {v["version"]: v for v in Registry(str(live["root"] / "registry.jsonl")).versions()}
    assert by[staged["candidate"]]["status"] == "rolled_back" and by[live_before]["status"] == "live"
    assert "post-switch probe" in by[staged["candidate"]]["history"][-1]["reason"]
    assert _update(live, tmp_path, live["data"]["more"])["outcome"] == "rolled_back"  # never switched on again
    assert _version(live["url"]) == live_before


def test_bad_input_is_refused_before_anything_trains(live, tmp_path):
    with pytest.raises(ConfigError, match="'animals.rougeL' is no metric the eval produces"):
        _update(live, tmp_path, live["data"]["useful"], gate={"metrics": {f"{NAME}.rougeL": 1.0}})
    nowhere = {"serve": {**live["serve"]["serve"], "port": free_port()}}
    with pytest.raises(ConnectionError, match="no deployment answers there"):
        _update(live, tmp_path, live["data"]["useful"], serve=nowhere)
    assert not (tmp_path / "update").exists()
