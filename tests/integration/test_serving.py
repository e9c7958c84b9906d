"""Serving on a real Ray Serve deployment over HTTP on loopback: the openai client, sampling parameters,
errors and fuzzing, keys from config, file and environment, load with a replica killed and a model update
in the middle, autoscaling, metrics, request logs and backpressure.

Tests that need another deployment deploy it; the others ask for the module's default first
(``served.default()``, a no-op when it already runs), so each passes whatever ran before it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai
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
from tests.conftest import make_lora_adapter, make_tiny_model
from tests.integration import procs
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
KEY, FILE_KEY, ENV_KEY = "sk-serving-test", "sk-serving-file", "sk-serving-env"  # config, api_keys_file, env
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
    # v1 with LoRA inputs for q/v, one adapter exported beside it and another in a root loaded on demand
    adapters = root / "lora_root"
    make_lora_adapter(out["hf-v1"], root / "qa", 4, ["q_proj", "v_proj"], seed=1)
    make_lora_adapter(out["hf-v1"], adapters / "sum", 8, ["q_proj"], seed=2)
    out["lora"] = onnx_export.run(ExportConfig(model=str(out["hf-v1"]), output=str(root / "lora"),
                                               adapters=[f"qa={root / 'qa'}"], lora_targets=["v_proj"]))
    out["lora_root"] = adapters
    long = make_tiny_model(root / "hf-long", seed=2, context=1024)  # room for a tools system message
    out["long"] = onnx_export.run(cfgmod.from_dict(ExportConfig, {"model": str(long), "output": str(root / "long"),
                                                                   "parity_greedy_tokens": 8}))
    return out


@dataclass
class Served:
    url: str
    port: int
    exports: dict
    keys_file: Path
    deployed: str = ""  # a name for what runs now

    def config(self, version: str = "v1", **serve) -> ServeConfig:
        options = {"port": self.port, "models": {MODEL: str(self.exports[version])}, "api_keys": [KEY],
                   "api_keys_file": str(self.keys_file), "replica_cpus": 0.5, "ingress_cpus": 0.1,
                   "max_tokens_limit": 48, "engine": {"max_running": 8, "intra_op_threads": 1},
                   "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                                   "upscale_delay_s": 1, "downscale_delay_s": 4, "metrics_interval_s": 0.5,
                                   "look_back_period_s": 2}, **serve}
        return cfgmod.from_dict(ServeConfig, {"serve": options})

    def deploy(self, name: str, config: ServeConfig) -> None:
        self.deployed = ""  # a failed update leaves it unknown
        server.start(config)
        self.deployed = name

    def default(self) -> None:
        """v1 under MODEL, autoscaling 1-2, keys from all three sources."""
        if self.deployed != "default":
            self.deploy("default", self.config())


@pytest.fixture(scope="module")
def served(ray_cluster, exports, tmp_path_factory):
    """The default deployment; the keys come from the config, a file and LMFORGE_API_KEYS (read when the
    app is built, as on the machine that runs ``lmforge serve``)."""
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# one key per line\n{FILE_KEY}\n")
    old = os.environ.get("LMFORGE_API_KEYS")
    os.environ["LMFORGE_API_KEYS"] = f"sk-another,{ENV_KEY}"
    port = free_port()
    s = Served(f"http://127.0.0.1:{port}", port, exports, keys_file)
    try:
        s.default()
        yield s
    finally:
        server.stop()
        if old is None:
            os.environ.pop("LMFORGE_API_KEYS", None)
        else:
            os.environ["LMFORGE_API_KEYS"] = old


def _client(url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, timeout=60, **kw)


def test_openai_client_completions_and_chat_streamed_and_not(served):
    served.default()
    client = _client(served.url, max_retries=0)
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


def test_structured_output_through_the_openai_client_into_its_types(served):
    """The client's own structured-output path: ``chat.completions.parse`` with a pydantic model (it sends
    a strict json_schema and parses the answer into the model), streamed JSON that validates, and vLLM's
    guided_choice through ``extra_body``, over HTTP from a random model."""
    from typing import Literal

    import pydantic

    class River(pydantic.BaseModel):
        name: Literal["Han", "Geum"]  # short: the tiny model's 500-token vocabulary spells JSON nearly by letter
        km: int = pydantic.Field(ge=0, le=999)  # bounded: a random model's digits would run on
        wet: bool

    served.default()
    client = _client(served.url, max_retries=0)
    messages = [{"role": "user", "content": "Describe a river."}]
    parsed = client.chat.completions.parse(model=MODEL, messages=messages, response_format=River, max_tokens=36,
                                           temperature=0)
    river = parsed.choices[0].message.parsed
    assert isinstance(river, River) and parsed.choices[0].finish_reason == "stop"
    schema = {"type": "json_schema", "json_schema": {"name": "river", "schema": River.model_json_schema()}}
    chunks = client.chat.completions.create(model=MODEL, messages=messages, response_format=schema, max_tokens=36,
                                            temperature=0, stream=True)
    assert River.model_validate_json("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)) == river
    done = client.completions.create(model=MODEL, prompt="Yes or no?", max_tokens=4, temperature=1, n=3,
                                     extra_body={"guided_choice": ["yes", "no"]})
    assert {c.text for c in done.choices} <= {"yes", "no"}
    with pytest.raises(openai.BadRequestError, match="guided_regex"):
        client.completions.create(model=MODEL, prompt="x", extra_body={"guided_regex": "a(b"})


def test_embeddings_through_the_openai_client(served, exports):
    """``embeddings.create`` as the client sends it by default (base64, decoded by the client): vectors
    equal to transformers' mean-pooled final hidden states, normalised, in input order."""
    from transformers import AutoModel

    served.default()
    texts = ["The history of the city of Seoul", "한강은 서울을 지난다"]
    resp = _client(served.url, max_retries=0).embeddings.create(model=MODEL, input=texts)
    base = AutoModel.from_pretrained(exports["hf-v1"]).eval()
    tok = AutoTokenizer.from_pretrained(exports["hf-v1"])
    assert [d.index for d in resp.data] == [0, 1] and resp.usage.prompt_tokens > 0
    for text, item in zip(texts, resp.data):
        with torch.no_grad():
            want = base(torch.tensor([tok(text).input_ids])).last_hidden_state[0].mean(0).numpy()
        got = np.array(item.embedding)
        assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) >= 0.999


def _texts(resp) -> list[str]:
    return [c.text for c in sorted(resp.choices, key=lambda c: c.index)]


def test_seed_n_and_top_k_over_the_api(served):
    """Sampled (temperature 1, every token forced by min_tokens): a seed repeats a completion and another
    seed changes it; n choices are each sampled (not n copies), streamed or not, and counted in usage;
    top_k=1 is greedy whatever the temperature. On a random model a sampler that ignored seed, n or top_k
    returns other text with near certainty."""
    served.default()
    client = _client(served.url, max_retries=0)
    sampled = dict(model=MODEL, prompt="The river", max_tokens=8, temperature=1.0, extra_body={"min_tokens": 8})
    first, again = (_texts(client.completions.create(seed=5, **sampled)) for _ in range(2))
    other = _texts(client.completions.create(seed=6, **sampled))
    assert first == again and first != other
    three = client.completions.create(n=3, seed=11, **sampled)
    assert sorted(c.index for c in three.choices) == [0, 1, 2] and len(set(_texts(three))) == 3
    assert three.usage.completion_tokens == 24 and all(c.finish_reason == "length" for c in three.choices)
    chunks = list(client.completions.create(n=2, seed=11, stream=True, **sampled))
    streamed = {i: "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in (0, 1)}
    assert [streamed[0], streamed[1]] == _texts(three)[:2]  # choice i's seed is seed + i, streamed or not
    assert {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason} == {0, 1}
    greedy = _texts(client.completions.create(model=MODEL, prompt="The river", max_tokens=8, temperature=0,
                                              extra_body={"min_tokens": 8}))
    top1 = _texts(client.completions.create(seed=5, **{**sampled, "extra_body": {"min_tokens": 8, "top_k": 1}}))
    assert top1 == greedy != first


def test_stop_ends_the_text_before_the_stop_string_streamed_or_not(served):
    """A stop string that is a whole token of a (seeded) completion, first seen at that token: the same
    request with that stop ends right before it with finish_reason "stop". (Stop strings spanning
    several tokens are issue #28's.)"""
    served.default()
    client = _client(served.url, max_retries=0)
    seeded = dict(model=MODEL, prompt="The river", max_tokens=16, temperature=1.0, seed=3,
                  extra_body={"min_tokens": 16})
    full = client.completions.create(logprobs=1, **seeded).choices[0]
    pieces = full.logprobs.tokens
    assert "".join(pieces) == full.text and len(pieces) == 16
    cut = next(k for k in range(2, 14) if len(pieces[k].strip()) >= 2 and full.text.find(pieces[k]) == len(
        "".join(pieces[:k])))
    want = "".join(pieces[:cut])
    done = client.completions.create(stop=[pieces[cut]], **seeded).choices[0]
    assert (done.text, done.finish_reason) == (want, "stop"), (pieces, cut)
    chunks = list(client.completions.create(stop=pieces[cut], stream=True, **seeded))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_echo_logprobs_equal_the_models_own(served, exports):
    """What evaluation tools score log-likelihood with: the prompt's token logprobs, via the API; streamed,
    the same text and logprobs arrive in chunks."""
    served.default()
    prompt = "The history of the city of Seoul"
    resp = _client(served.url).completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    lp = resp.choices[0].logprobs
    assert resp.choices[0].text == prompt and lp.token_logprobs[0] is None
    hf = AutoModelForCausalLM.from_pretrained(exports["hf-v1"]).eval()
    ids = AutoTokenizer.from_pretrained(exports["hf-v1"])(prompt).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
    want = [logp[j - 1, ids[j]].item() for j in range(1, len(ids))]
    assert len(lp.token_logprobs) == len(ids)
    assert np.allclose(lp.token_logprobs[1:], want, atol=1e-3)

    ask = dict(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=2,
               extra_body={"min_tokens": 4})
    whole = _client(served.url).completions.create(**ask).choices[0]
    chunks = [c.choices[0] for c in _client(served.url).completions.create(stream=True, **ask) if c.choices]
    assert "".join(c.text for c in chunks) == whole.text and whole.text.startswith(prompt)
    tokens = [t for c in chunks if c.logprobs for t in c.logprobs.tokens]
    logprobs = [x for c in chunks if c.logprobs for x in c.logprobs.token_logprobs]
    assert tokens == whole.logprobs.tokens and len(tokens) == len(ids) + 4
    assert logprobs[0] is None and np.allclose(logprobs[1:], whole.logprobs.token_logprobs[1:], atol=1e-5)
    assert all(len(top) <= 2 for c in chunks if c.logprobs for top in c.logprobs.top_logprobs[1:])


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
    served.default()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    data = body if isinstance(body, str) else json.dumps(body)
    resp = requests.post(f"{served.url}/v1/completions", data=data, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    if status == 404:
        assert error["code"] == "model_not_found"
    if body == {"model": "tiny", "prompt": "x", "max_tokens": 10**6}:
        assert "limit of 48" in error["message"]


def test_keys_from_config_file_and_environment_and_401_otherwise_never_echoed(served):
    served.default()
    url = served.url
    for key in (KEY, FILE_KEY, ENV_KEY):  # serve.api_keys, serve.api_keys_file, LMFORGE_API_KEYS
        resp = requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert resp.status_code == 200, (key, resp.text)
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": "Bearer # one key per line"}):
        for stream in (False, True):
            resp = requests.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x", "stream": stream},
                                 headers=headers, timeout=30)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
            assert KEY not in resp.text and "sk-wrong" not in resp.text
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # open


def test_under_a_route_prefix_every_route_but_healthz_needs_a_key_and_big_bodies_get_413(served):
    """Serve keeps a route_prefix in the path: the key check must not depend on it (it once applied to
    paths starting with /v1/ only, so /api/v1/... passed without a key). Unknown routes are denied too.
    A body over serve.max_request_bytes is refused from its declared length, before it is read."""
    served.deploy("route prefix", served.config(route_prefix="/api", max_request_bytes=1 << 20,
                                                autoscaling={"min_replicas": 1, "max_replicas": 1}))
    url = f"http://127.0.0.1:{served.port}/api"
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    for method, path in (("get", "/v1/models"), ("post", "/v1/completions"), ("post", "/v1/chat/completions"),
                         ("get", "/docs"), ("get", "/openapi.json"), ("get", "/nothing/here")):
        resp = requests.request(method, f"{url}{path}", json=body, timeout=30)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key", (path, resp.text)
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    headers = {"Authorization": f"Bearer {KEY}"}
    ok = _client(url).completions.create(model=MODEL, prompt="The river", max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")
    big = {"model": MODEL, "prompt": "x" * (10 * 2**20), "max_tokens": 1}  # a 10 MB body
    resp = requests.post(f"{url}/v1/completions", json=big, headers=headers, timeout=60)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    served.default()


def test_schemathesis_finds_no_server_error(served, tmp_path):
    served.default()
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{served.url}/openapi.json", "--checks",
           "not_a_server_error", "-H", f"Authorization: Bearer {KEY}", "--max-examples", "25", "--seed", "1",
           "--request-timeout", "30", "--workers", "1"]  # 2 workers hit a CPython 3.11 bug in ast.parse
    # in a temp dir: schemathesis keeps its example cache in ./.schemathesis, not in the checkout
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]


def _replicas(deployment: str = f"model-{MODEL}") -> int:
    from ray import serve

    app = serve.status().applications.get(server.APP_NAME)
    return app.deployments[deployment].replica_states.get("RUNNING", 0) if app else 0


def _model_replicas(cluster) -> list:
    """The session cluster's model replica processes, by the PIDs Ray reports for them."""
    return procs.ray_actors(cluster.address, cluster.sid, f"ServeReplica:{server.APP_NAME}:model-{MODEL}")


def _version(url: str) -> str:
    return _client(url).models.list().data[0].model_extra["version"]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


@pytest.mark.timeout(480)
def test_load_with_autoscaling_a_killed_replica_and_a_model_update(served, session_cluster):
    """16 clients for at least ~25 s and until the update is deployed (on a slow host the replacement
    replica takes longer; the load must outlast it): replicas rise to max_replicas, one is SIGKILLed, the
    model is updated to a new version while the load goes on. Half the clients never retry (every non-2xx
    and every stream that ends without a finish_reason counts): the only requests allowed to fail are
    those the dead replica was serving when it died; none of the rolling update's. The other half use the
    openai client's default retries, as applications do: they lose nothing. Replicas fall back afterwards."""
    served.default()
    url = served.url
    old_version = _version(url)
    result: dict = {}
    updated = threading.Event()

    def load(name: str, **kw):
        result[name] = asyncio.run(run_load(url, MODEL, KEY, concurrency=8, duration_s=25, max_tokens=16,
                                            until=updated.is_set, **kw))

    threads = [threading.Thread(target=load, args=("bare",), kwargs={"max_retries": 0, "stream": True}),
               threading.Thread(target=load, args=("retrying",), kwargs={"stream": False})]
    for t in threads:
        t.start()
    try:
        _wait(lambda: _replicas() >= 2, 120, "never scaled up to 2 replicas")
        replicas = _model_replicas(session_cluster)
        victim, before = replicas[0], {p.pid for p in replicas}
        victim.send_signal(signal.SIGKILL)
        killed_at = time.perf_counter()
        # Serve has seen the death and has a replacement up (a new process, not the dead one) before the update
        _wait(lambda: _replicas() >= 2 and any(p.pid not in before for p in _model_replicas(session_cluster)),
              180, "the killed replica was never replaced")
        replaced_at = time.perf_counter()
        served.deploy("v2", served.config("v2"))  # the same name, a new export: replicas roll
    finally:
        updated.set()  # the load stops after its 25 s, or now if later
    for t in threads:
        t.join(timeout=120)
    bare, retrying = result["bare"], result["retrying"]
    print(json.dumps({"bare": bare.summary(), "retrying": retrying.summary()}, indent=1))
    assert _version(url) != old_version
    assert bare.requests > 30 and retrying.requests > 30, (bare.requests, retrying.requests)
    assert retrying.errors == [], retrying.errors[:5]
    # a request that failed without retries was in flight on the dead replica: started before the kill
    in_flight_at_kill = [(s, e) for s, e in bare.failures if s <= killed_at <= e]
    assert len(bare.failures) == len(in_flight_at_kill) <= 8, (bare.errors[:5], killed_at, replaced_at,
                                                              bare.failures)
    _wait(lambda: _replicas() == 1, 120, "never scaled back down once the load stopped")


def _scrape() -> dict[str, float]:
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


def test_metrics_count_the_requests_and_tokens_sent(served):
    served.default()
    url = served.url
    before = _scrape()
    client = _client(url, max_retries=0)
    prompt_tokens = completion_tokens = 0
    for i in range(5):  # min_tokens: every request has a first token, whatever the random model prefers
        done = client.completions.create(model=MODEL, prompt="The river" + " flows" * i, max_tokens=4,
                                         extra_body={"min_tokens": 2})
        prompt_tokens += done.usage.prompt_tokens
        completion_tokens += done.usage.completion_tokens
    for _ in range(3):
        chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=4, stream=True, extra_body={"min_tokens": 2},
                                                     stream_options={"include_usage": True}))
        prompt_tokens += chunks[-1].usage.prompt_tokens
        completion_tokens += chunks[-1].usage.completion_tokens
    requests.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)  # 401
    expected = {'ray_lmforge_requests_total|endpoint="completions"|status="200"': 5,
                'ray_lmforge_requests_total|endpoint="chat"|status="200"': 3,
                'ray_lmforge_requests_total|endpoint="completions"|status="401"': 1,
                "ray_lmforge_time_to_first_token_seconds_count": 8,
                'ray_lmforge_request_latency_seconds_count|endpoint="completions"': 6,
                'ray_lmforge_request_latency_seconds_count|endpoint="chat"': 3,
                "ray_lmforge_prompt_tokens_total": prompt_tokens,
                "ray_lmforge_generation_tokens_total": completion_tokens}
    deadline, got = time.monotonic() + 40, {}
    while time.monotonic() < deadline:  # Ray's metrics agent exports every few seconds
        after = _scrape()
        got = {k: after.get(k, 0) - before.get(k, 0) for k in expected}
        if got == expected:
            break
        time.sleep(0.5)
    assert got == expected
    assert {"ray_lmforge_inter_token_latency_seconds_bucket", "ray_lmforge_running_sequences"} <= {
        k.split("|")[0] for k in _scrape()}


def test_request_logs_are_json_lines_without_the_prompt_text(served):
    """One JSON line per request in the replica's Serve log, with its token counts and no prompt text
    (serve.log_prompts is off by default)."""
    import ray

    served.default()
    marker = "zebra-quokka-marker"
    done = _client(served.url, max_retries=0).completions.create(model=MODEL, prompt=f"{marker} The river",
                                                                  max_tokens=3, extra_body={"min_tokens": 3})
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    found: list[dict] = []

    def logged() -> bool:
        for path in logs.glob(f"replica_{server.APP_NAME}_model-{MODEL}_*.log"):
            text = path.read_text(errors="replace")
            assert marker not in text, f"{path} holds the prompt text"
            found.extend(e for e in map(_json_or_none, text.splitlines())
                         if e and done.id in str(e.get("message", "")))
        return bool(found)

    _wait(logged, 30, f"no request log line for {done.id} under {logs}")
    entry = json.loads(found[0]["message"])
    assert entry["event"] == "request" and entry["status"] == 200 and "prompt" not in entry
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (done.usage.prompt_tokens, 3)


def _json_or_none(line: str) -> dict | None:
    try:
        return json.loads(line)
    except ValueError:
        return None


def test_two_models_behind_one_endpoint_routed_by_the_model_field(served, exports):
    """A base and a second model side by side: each request reaches the model it names (a gateway in
    front of one deployment per model); /v1/models lists both with their versions."""
    from lmforge.generate.onnx_generator import OnnxGenerator, SamplingParams

    url = served.url
    config = served.config(autoscaling={"min_replicas": 1, "max_replicas": 1})
    config.serve.models = {"base": str(exports["v1"]), "tuned": str(exports["v2"])}
    served.deploy("two models", config)
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


def test_tool_calls_through_a_gateway_into_the_clients_types(served, exports):
    """Two tools, tool_choice required, over HTTP through the gateway (two models): the official client
    parses the answer into its tool-call types, streamed (deltas it can accumulate) and not; the
    arguments validate against the function's schema."""
    import jsonschema

    config = served.config(autoscaling={"min_replicas": 1, "max_replicas": 1})
    config.serve.models = {"base": str(exports["v1"]), "tools": str(exports["long"])}
    served.deploy("tools", config)
    params = {"type": "object", "properties": {"x": {"enum": ["a", "b"]}}, "required": ["x"]}
    tools = [{"type": "function", "function": {"name": "f", "description": "pick", "parameters": params}},
             {"type": "function", "function": {"name": "g", "parameters": params}}]
    client = _client(served.url, max_retries=2)
    ask = {"model": "tools", "messages": [{"role": "user", "content": "Pick one."}], "tools": tools,
           "tool_choice": "required", "max_tokens": 48, "temperature": 0}
    done = client.chat.completions.create(**ask)
    (call,) = done.choices[0].message.tool_calls
    assert done.choices[0].finish_reason == "tool_calls" and call.function.name in ("f", "g")
    jsonschema.validate(json.loads(call.function.arguments), params)
    deltas = [c.choices[0].delta for c in client.chat.completions.create(**ask, stream=True) if c.choices]
    streamed = [t for d in deltas for t in d.tool_calls or []]
    assert [(t.function.name, t.function.arguments) for t in streamed] == [(call.function.name,
                                                                            call.function.arguments)]


def _with_adapter(export: Path, adapter: str | None, path: Path | None, prompt: str,
                  max_tokens: int) -> tuple[str, list[float]]:
    """Greedy text and token logprobs of ``export`` with ``adapter`` (None: the base) in process: what the
    server must answer (the random model's text alone is the same few tokens whatever the adapter)."""
    from lmforge.generate.engine import Engine, SamplingParams
    from lmforge.generate.onnx_model import OnnxModel

    model = OnnxModel(export)
    if adapter:
        model.adapters.load(adapter, path)
    engine = Engine(model, max_running=1)
    engine.add("x", model.tokenizer(prompt).input_ids, SamplingParams(max_tokens=max_tokens, temperature=0,
                                                                      logprobs=0), adapter=adapter)
    text, logprobs = "", []
    while engine.has_work():
        for out in engine.step():
            text, logprobs = text + out.text, logprobs + [lp.logprob for lp in out.logprobs or []]
    return text, logprobs


def test_lora_adapters_beside_their_base_through_a_gateway(served, exports, tmp_path):
    """An export with LoRA inputs behind the gateway: `model: tiny:qa` (exported beside it) and `tiny:sum`
    (loaded from serve.lora_root by the first request naming it) answer as the adapter does in process,
    the base as the base; /v1/models lists the loaded adapters; unknown adapters are 404, a path outside
    the root 400, unloading takes one out; schemathesis over the load/unload routes finds no 5xx."""
    config = served.config(autoscaling={"min_replicas": 1, "max_replicas": 1}, lora_root=str(exports["lora_root"]))
    config.serve.models = {MODEL: str(exports["lora"]), "other": str(exports["v2"])}
    served.deploy("lora", config)
    client = _client(served.url, max_retries=2)
    assert sorted(m.id for m in client.models.list().data) == ["other", MODEL, f"{MODEL}:qa"]
    prompt, adapters = "The river", {"qa": exports["lora"] / "adapters" / "qa", "sum": exports["lora_root"] / "sum"}
    answers = {}
    for name in ("qa", "sum", None):
        model = f"{MODEL}:{name}" if name else MODEL
        done = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, logprobs=0)
        answers[name] = (done.choices[0].text, done.choices[0].logprobs.token_logprobs)
        want_text, want_logprobs = _with_adapter(exports["lora"], name, adapters.get(name), prompt, 8)
        assert answers[name][0] == want_text and done.model == model, name
        np.testing.assert_allclose(answers[name][1], want_logprobs, atol=1e-4)
        chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=4, temperature=0, stream=True))
        assert chunks and all(c.model == model for c in chunks)
    for a, b in (("qa", "sum"), ("qa", None), ("sum", None)):  # each adapter changes the answer
        assert not np.allclose(answers[a][1], answers[b][1], atol=1e-3), (a, b)
    assert f"{MODEL}:sum" in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model=f"{MODEL}:nope", prompt=prompt, max_tokens=2)
    headers = {"Authorization": f"Bearer {KEY}"}
    outside = requests.post(f"{served.url}/v1/load_lora_adapter", headers=headers, timeout=30,
                            json={"model": MODEL, "lora_name": "x", "lora_path": str(tmp_path)})
    assert outside.status_code == 400 and "not under serve.lora_root" in outside.json()["error"]["message"]
    gone = requests.post(f"{served.url}/v1/unload_lora_adapter", json={"model": MODEL, "lora_name": "sum"},
                         headers=headers, timeout=30)
    assert gone.status_code == 200 and f"{MODEL}:sum" not in [m.id for m in client.models.list().data]
    assert requests.post(f"{served.url}/v1/unload_lora_adapter", json={"model": MODEL, "lora_name": "sum"},
                         headers=headers, timeout=30).status_code == 404
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{served.url}/openapi.json", "--checks",
           "not_a_server_error", "-H", f"Authorization: Bearer {KEY}", "--max-examples", "15", "--seed", "1",
           "--include-path-regex", "lora_adapter|completions", "--request-timeout", "30", "--workers", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.mark.parametrize("status", [503, 429])
def test_past_the_queue_refused_with_retry_after_and_recovery(served, status):
    """One request running, one queued: the rest of a burst of 8 is refused at once with the configured
    status (serve.backpressure_status), a Retry-After and an OpenAI-shaped body; then it recovers."""
    url = served.url
    served.deploy(f"backpressure {status}", served.config(
        max_ongoing_requests=1, max_queued_requests=1, backpressure_status=status,
        autoscaling={"min_replicas": 1, "max_replicas": 1}, engine={"max_running": 1}))
    body = {"model": MODEL, "prompt": "The river", "max_tokens": 40, "min_tokens": 40}
    headers = {"Authorization": f"Bearer {KEY}"}

    def post(_):
        return requests.post(f"{url}/v1/completions", json=body, headers=headers, timeout=120)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    codes = sorted(r.status_code for r in responses)
    refused = [r for r in responses if r.status_code == status]
    assert refused and codes.count(200) >= 1 and set(codes) <= {200, status}, codes
    assert all(r.headers.get("Retry-After") for r in refused)
    assert all(r.headers.get("content-type") == "application/json" and r.json()["error"]["code"] == "overloaded"
               for r in refused), [(r.headers, r.text[:200]) for r in refused]  # OpenAI-shaped, not Serve's text
    assert post(0).status_code == 200  # recovered once the load stopped


def test_eval_through_the_endpoint_agrees_with_the_local_evaluation(served, exports, tmp_path, monkeypatch):
    """``lmforge eval model=http://.../v1``: multiple choice scored through /v1/completions (echo +
    logprobs, token-id prompts) and generation through it pick what the same export picks in process,
    example by example; the key comes from the environment variable api_key_env names."""
    from lmforge.evaluate import evaluation
    from lmforge.evaluate.config import EvalConfig

    served.default()
    mc, gen = tmp_path / "mc.jsonl", tmp_path / "gen.jsonl"
    mc.write_text("".join(json.dumps({"prompt": f"Item {i} of the list is", "choices": ["red", "a blue one", "green"],
                                      "answer": i % 3}) + "\n" for i in range(16)))
    gen.write_text("".join(json.dumps({"prompt": f"The river {i}", "reference": "flows south"}) + "\n"
                           for i in range(6)))
    tasks = [{"name": "mc", "data": str(mc)}, {"name": "gen", "data": str(gen), "max_tokens": 8,
                                               "metrics": ["rougeL", "perplexity"]}]
    monkeypatch.setenv("LMFORGE_EVAL_KEY", KEY)
    runs = {}
    for name, model in (("local", str(exports["v1"])), ("endpoint", f"{served.url}/v1")):
        out = evaluation.run(cfgmod.from_dict(EvalConfig, {
            "model": model, "tokenizer": str(exports["v1"]), "api_key_env": "LMFORGE_EVAL_KEY", "tasks": tasks,
            "engine": "local", "output": str(tmp_path / name), "concurrency": 4}))
        runs[name] = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    local, remote = runs["local"], runs["endpoint"]
    assert [r["id"] for r in local] == [r["id"] for r in remote] and len(local) == 22
    assert [r["prediction"] for r in local] == [r["prediction"] for r in remote]
    for a, b in zip(local, remote):
        if "logprobs" in a:
            assert np.allclose(a["logprobs"], b["logprobs"], atol=1e-3), (a, b)
