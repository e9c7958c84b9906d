"""Serving on a real Ray Serve deployment over HTTP on loopback: the openai client, errors and fuzzing,
load with a replica killed and a model update in the middle, autoscaling, metrics and backpressure."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import openai
import psutil
import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge import config as cfgmod
from lmforge.bench.load import run_load
from lmforge.export import onnx_export
from lmforge.export.config import ExportConfig
from lmforge.serve import server
from lmforge.serve.config import ServeConfig
from tests.conftest import make_tiny_model
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
KEY = "sk-serving-test"
MODEL = "tiny"


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Two versions of one tiny model (different weights), each exported."""
    root = tmp_path_factory.mktemp("serving")
    out = {}
    for version, seed in (("v1", 0), ("v2", 1)):
        hf = make_tiny_model(root / f"hf-{version}", seed=seed)
        out[version] = onnx_export.run(cfgmod.from_dict(ExportConfig, {"model": str(hf),
                                                                       "output": str(root / version)}))
        out[f"hf-{version}"] = hf
    return out


def _config(model_dir: Path, port: int, **serve) -> ServeConfig:
    options = {"port": port, "models": {MODEL: str(model_dir)}, "api_keys": [KEY], "replica_cpus": 0.5,
               "ingress_cpus": 0.1, "max_tokens_limit": 48, "engine": {"max_running": 8, "intra_op_threads": 1},
               "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                               "upscale_delay_s": 1, "downscale_delay_s": 4, "metrics_interval_s": 0.5,
                               "look_back_period_s": 2}, **serve}
    return cfgmod.from_dict(ServeConfig, {"serve": options})


@pytest.fixture(scope="module")
def served(ray_cluster, exports):
    port = free_port()
    url = server.start(_config(exports["v1"], port))
    yield url, port
    server.stop()


def _client(url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, timeout=60, **kw)


def test_openai_client_completions_and_chat_streamed_and_not(served):
    url, _ = served
    client = _client(url, max_retries=0)
    done = client.completions.create(model=MODEL, prompt="The river", max_tokens=8, temperature=0)
    streamed = list(client.completions.create(model=MODEL, prompt="The river", max_tokens=8, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text
    assert streamed[-1].usage.completion_tokens == done.usage.completion_tokens
    messages = [{"role": "user", "content": "서울은 어떤 도시인가요?"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason in ("stop", "length")
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_echo_logprobs_equal_the_models_own(served, exports):
    """What evaluation tools score log-likelihood with: the prompt's token logprobs, via the API."""
    url, _ = served
    prompt = "The history of the city of Seoul"
    resp = _client(url).completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    lp = resp.choices[0].logprobs
    assert resp.choices[0].text == prompt and lp.token_logprobs[0] is None
    hf = AutoModelForCausalLM.from_pretrained(exports["hf-v1"]).eval()
    ids = AutoTokenizer.from_pretrained(exports["hf-v1"])(prompt).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
    want = [logp[j - 1, ids[j]].item() for j in range(1, len(ids))]
    assert len(lp.token_logprobs) == len(ids)
    assert np.allclose(lp.token_logprobs[1:], want, atol=1e-3)


@pytest.mark.parametrize("body, status, param", [
    ('{"model": "tiny", "prompt": ', 400, None),  # broken JSON
    ({"model": "tiny", "prompt": 42}, 400, "prompt"),
    ({"model": "tiny", "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 10**6}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "word " * 200, "max_tokens": 8}, 400, "prompt"),
    ({"model": "gpt-9", "prompt": "x"}, 404, "model"),
    ({"model": "tiny", "prompt": "x", "temperature": "hot"}, 400, "temperature"),
])
def test_bad_requests_get_4xx_with_a_clear_message(served, body, status, param):
    url, _ = served
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    data = body if isinstance(body, str) else json.dumps(body)
    resp = requests.post(f"{url}/v1/completions", data=data, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    if status == 404:
        assert error["code"] == "model_not_found"
    if body == {"model": "tiny", "prompt": "x", "max_tokens": 10**6}:
        assert "limit of 48" in error["message"]


def test_missing_or_wrong_key_is_401_streamed_or_not_and_never_echoed(served):
    url, _ = served
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {KEY}"}):
        for stream in (False, True):
            resp = requests.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x", "stream": stream},
                                 headers=headers, timeout=30)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
            assert KEY not in resp.text and "sk-wrong" not in resp.text
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # open


def test_schemathesis_finds_no_server_error(served):
    url, _ = served
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json", "--checks",
           "not_a_server_error", "-H", f"Authorization: Bearer {KEY}", "--max-examples", "25", "--seed", "1",
           "--request-timeout", "30", "--workers", "1"]  # 2 workers hit a CPython 3.11 bug in ast.parse
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]


def _replicas(deployment: str = f"model-{MODEL}") -> int:
    from ray import serve

    app = serve.status().applications.get(server.APP_NAME)
    return app.deployments[deployment].replica_states.get("RUNNING", 0) if app else 0


def _kill_one_replica() -> int:
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(f"ServeReplica:{server.APP_NAME}:model-{MODEL}" in part for part in (proc.info["cmdline"] or [])):
            os.kill(proc.info["pid"], signal.SIGKILL)
            return proc.info["pid"]
    raise AssertionError("no model replica to kill")


def _version(url: str) -> str:
    return _client(url).models.list().data[0].model_extra["version"]


def test_load_with_autoscaling_a_killed_replica_and_a_model_update(served, exports):
    """16 clients for ~40 s: replicas rise to max_replicas, one is SIGKILLed, the model is updated to a new
    version; the openai client (default retries) sees no failed request; replicas fall back afterwards."""
    url, port = served
    old_version = _version(url)
    result: dict = {}

    def load():
        result["load"] = asyncio.run(run_load(url, MODEL, KEY, concurrency=16, duration_s=40, max_tokens=16,
                                              stream=False))

    thread = threading.Thread(target=load)
    thread.start()
    deadline = time.monotonic() + 30
    while _replicas() < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    scaled_up = _replicas()
    killed = _kill_one_replica()
    time.sleep(3)
    server.start(_config(exports["v2"], port))  # the same name, a new export: replicas roll
    thread.join(timeout=120)
    summary = result["load"].summary()
    print(json.dumps(summary, indent=1))
    assert scaled_up == 2 and killed
    assert summary["errors"] == 0 and summary["requests"] > 50, summary["error_samples"]
    assert _version(url) != old_version
    deadline = time.monotonic() + 60
    while _replicas() > 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert _replicas() == 1  # scaled back down once the load stopped


def _scrape(port: int) -> dict[str, float]:
    """Sum of each lmforge metric sample over replicas, keyed by name and the labels that matter."""
    from lmforge.cluster.session import metrics_address

    text = requests.get(metrics_address(), timeout=10).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("ray_lmforge_"):
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{")[0]
        labels = dict(kv.split("=", 1) for kv in name.split("{", 1)[1].rstrip("}").split(",") if "=" in kv) \
            if "{" in name else {}
        key = metric + "".join(f"|{k}={labels[k]}" for k in ("endpoint", "status") if k in labels)
        totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def test_metrics_count_the_requests_sent(served):
    url, port = served
    before = _scrape(port)
    client = _client(url, max_retries=0)
    for _ in range(5):  # min_tokens: every request has a first token, whatever the random model prefers
        client.completions.create(model=MODEL, prompt="The river", max_tokens=4, extra_body={"min_tokens": 2})
    for _ in range(3):
        list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4, stream=True, extra_body={"min_tokens": 2}))
    requests.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)  # 401
    expected = {'ray_lmforge_requests_total|endpoint="completions"|status="200"': 5,
                'ray_lmforge_requests_total|endpoint="chat"|status="200"': 3,
                'ray_lmforge_requests_total|endpoint="completions"|status="401"': 1,
                "ray_lmforge_time_to_first_token_seconds_count": 8,
                'ray_lmforge_request_latency_seconds_count|endpoint="completions"': 6,
                'ray_lmforge_request_latency_seconds_count|endpoint="chat"': 3}
    deadline, got = time.monotonic() + 40, {}
    while time.monotonic() < deadline:  # Ray's metrics agent exports every few seconds
        after = _scrape(port)
        got = {k: after.get(k, 0) - before.get(k, 0) for k in expected}
        if got == expected:
            break
        time.sleep(2)
    assert got == expected
    assert {"ray_lmforge_inter_token_latency_seconds_bucket", "ray_lmforge_running_sequences"} <= {
        k.split("|")[0] for k in _scrape(port)}


def test_two_models_behind_one_endpoint_routed_by_the_model_field(served, exports):
    """A base and a second model side by side: each request reaches the model it names (a gateway in
    front of one deployment per model); /v1/models lists both with their versions."""
    from lmforge.generate.onnx_generator import OnnxGenerator, SamplingParams

    url, port = served
    config = _config(exports["v1"], port, autoscaling={"min_replicas": 1, "max_replicas": 1})
    config.serve.models = {"base": str(exports["v1"]), "tuned": str(exports["v2"])}
    server.start(config)
    client = _client(url, max_retries=2)
    assert sorted(m.id for m in client.models.list().data) == ["base", "tuned"]
    for name, version in (("base", "v1"), ("tuned", "v2")):
        got = client.completions.create(model=name, prompt="The river", max_tokens=6, temperature=0).choices[0].text
        (want,) = OnnxGenerator(exports[version]).generate(["The river"], SamplingParams(max_tokens=6, temperature=0))
        assert got == want.text, name
        streamed = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=4, stream=True)
        assert list(streamed)
    with pytest.raises(openai.BadRequestError, match="model: required"):
        requests_free = _client(url, max_retries=0)
        requests_free.completions.create(model=None, prompt="x", max_tokens=2)
    assert requests.post(f"{url}/v1/completions", json={"model": "nope", "prompt": "x"},
                         headers={"Authorization": f"Bearer {KEY}"}, timeout=10).status_code == 404


def test_past_the_queue_503_with_retry_after_and_recovery(served, exports):
    url, port = served
    server.start(_config(exports["v1"], port, max_ongoing_requests=1, max_queued_requests=1,
                         autoscaling={"min_replicas": 1, "max_replicas": 1}, engine={"max_running": 1}))
    body = {"model": MODEL, "prompt": "The river", "max_tokens": 40, "min_tokens": 40}
    headers = {"Authorization": f"Bearer {KEY}"}

    def post(_):
        return requests.post(f"{url}/v1/completions", json=body, headers=headers, timeout=120)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    codes = sorted(r.status_code for r in responses)
    refused = [r for r in responses if r.status_code == 503]
    assert refused and codes.count(200) >= 1 and set(codes) <= {200, 503}, codes
    assert all(r.headers.get("Retry-After") for r in refused)
    assert all(r.headers.get("content-type") == "application/json" and r.json()["error"]["code"] == "overloaded"
               for r in refused), [(r.headers, r.text[:200]) for r in refused]  # OpenAI-shaped, not Serve's text
    assert post(0).status_code == 200  # recovered once the load stopped
