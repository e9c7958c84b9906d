"""Ray Serve glue: the deployments behind ``lmforge serve`` and ``build_app(cfg) -> Application``.

One ``ModelServer`` deployment per served model: its replicas each run one engine with continuous
batching. With one model it is also the HTTP front; with several, a ``Gateway`` front routes each
request by its ``model`` field to that model's deployment through a handle. Why one deployment per
model rather than Serve's model multiplexing: each model gets its own replicas, resources and
autoscaling (a base and a fine-tuned model see different traffic), an update of one model rolls only its
replicas, and an engine batching a model's requests lives as long as its replica instead of being
evicted from a per-replica model cache. Why no gateway for one model: every streamed token would cross
one more process, which on a small host costs a fifth of a core (docs/benchmarks.md, "Serving").
``app_builder(args)`` serves ``serve deploy`` with a Serve config file (``infra/serve.yaml``).
"""

# No `from __future__ import annotations`: Serve's ingress wrapper hides string annotations from FastAPI.

import logging
import re
from pathlib import Path

from fastapi import Request
from ray import serve
from ray.serve.config import BackpressureConfig

from lmforge import config as cfgmod
from lmforge import storage
from lmforge.generate.adapters import AdapterError
from lmforge.serve import auth, catalog, responses
from lmforge.serve.config import ServeConfig, ServeOptions
from lmforge.serve.http import Front, make_api
from lmforge.serve.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    LoadAdapterRequest,
    RequestError,
    UnloadAdapterRequest,
    error_body,
)

log = logging.getLogger("ray.serve.lmforge")

gateway_api = make_api()
model_api = make_api()


def _own_front(api, key_digests: list, retry_after_s: float, front: Front, max_in_flight: int,
               refuse_status: int, max_request_bytes: int, request_log: str | None = None) -> None:
    from lmforge.serve.metrics import GatewayMetrics
    from lmforge.serve.request_log import RequestLog

    api.state.key_digests = list(key_digests)
    api.state.request_log = RequestLog(request_log) if request_log else None
    api.state.max_request_bytes = max_request_bytes
    api.state.metrics = GatewayMetrics()
    front.retry_after = str(max(1, round(retry_after_s)))
    front.max_in_flight = max_in_flight
    front.refuse_status = refuse_status


class _ModelReplica:
    """One model's replica: its engine (continuous batching) and the OpenAI endpoints' work."""

    def __init__(self, name: str, model_dir: str, options: dict, key_digests: list, retry_after_s: float):
        from lmforge.generate.async_engine import AsyncEngine
        from lmforge.generate.engine import Engine
        from lmforge.generate.onnx_model import OnnxModel
        from lmforge.serve.handlers import ModelEndpoints
        from lmforge.serve.lora import ServedAdapters
        from lmforge.serve.metrics import ModelMetrics

        opts = cfgmod.from_dict(ServeOptions, options)
        model_dir = storage.local_dir(model_dir)  # an s3:// export: this replica's node mirrors it
        model = OnnxModel(model_dir, opts.engine.intra_op_threads, device=opts.device)
        self.metrics = ModelMetrics(name)
        engine = Engine(model, **opts.engine.engine_args())
        log.info("model %s: %s", name, engine.describe())  # the replica's memory bound, stated at start
        self.engine = AsyncEngine(engine, on_step=self.metrics.engine_state)
        adapters = ServedAdapters(name, model, model_dir, opts.lora_root, opts.max_loaded_adapters)
        if adapters.loaded():
            log.info("model %s: LoRA adapters %s", name, ", ".join(sorted(adapters.loaded())))
        self.endpoints = ModelEndpoints(self.engine, name, opts, self.metrics, adapters)
        self._info = catalog.model_info(model_dir)
        self.model_names = [name]

    def info(self) -> dict:
        """/v1/models entries: the model, and each adapter loaded in this replica."""
        return {self.model_names[0]: self._info, **self.endpoints.adapters.listed()}

    async def load_adapter(self, body, request_id):
        try:
            name = await self.endpoints.adapters.load(body.lora_name, body.lora_path)
        except RequestError as e:
            return e.status, error_body(str(e), param=e.param, code=e.code)
        except (AdapterError, FileNotFoundError) as e:
            return 400, error_body(str(e), param="lora_path")
        return 200, {"object": "lora_adapter", "id": f"{self.model_names[0]}:{name}", "status": "loaded"}

    async def unload_adapter(self, body, request_id):
        try:
            self.endpoints.adapters.unload(body.lora_name)
        except RequestError as e:
            return e.status, error_body(str(e), param="lora_name", code=e.code)
        return 200, {"object": "lora_adapter", "id": f"{self.model_names[0]}:{body.lora_name}", "status": "unloaded"}

    async def completions(self, body, request_id):
        return await self.endpoints.completions(body, request_id)

    async def completions_stream(self, body, request_id):
        async for item in self.endpoints.completions_stream(body, request_id):
            yield item

    async def chat(self, body, request_id):
        return await self.endpoints.chat(body, request_id)

    async def chat_stream(self, body, request_id):
        async for item in self.endpoints.chat_stream(body, request_id):
            yield item

    async def embeddings(self, body, request_id):
        return await self.endpoints.embeddings(body, request_id)

    def check_health(self) -> None:
        if not self.engine._thread.is_alive():
            raise RuntimeError("the engine thread has stopped")

    def __del__(self):
        self.engine.stop()


@serve.deployment
class ModelServer(_ModelReplica):
    """A model among several: the gateway calls its methods through a handle."""


@serve.deployment
@serve.ingress(model_api)
class ModelFront(_ModelReplica, Front):
    """The only model served: its replicas are the HTTP front too (one process less per streamed token)."""

    def __init__(self, name: str, model_dir: str, options: dict, key_digests: list, retry_after_s: float):
        super().__init__(name, model_dir, options, key_digests, retry_after_s)
        opts = self.endpoints.opts
        _own_front(model_api, key_digests, retry_after_s, self, opts.max_ongoing_requests + opts.max_queued_requests,
                   opts.backpressure_status, opts.max_request_bytes, opts.request_log)

    @model_api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "models": self.model_names}

    @model_api.get("/v1/models")
    async def list_models(self) -> dict:
        return responses.models_body(self.info())

    @model_api.post("/v1/completions")
    async def http_completions(self, body: CompletionRequest, request: Request):
        return await self._dispatch("completions", body, request)

    @model_api.post("/v1/chat/completions")
    async def http_chat(self, body: ChatCompletionRequest, request: Request):
        return await self._dispatch("chat", body, request)

    @model_api.post("/v1/embeddings")
    async def http_embeddings(self, body: EmbeddingRequest, request: Request):
        return await self._dispatch("embeddings", body, request)

    @model_api.post("/v1/load_lora_adapter")
    async def http_load_adapter(self, body: LoadAdapterRequest, request: Request):
        return await self._dispatch("load_adapter", body, request)

    @model_api.post("/v1/unload_lora_adapter")
    async def http_unload_adapter(self, body: UnloadAdapterRequest, request: Request):
        return await self._dispatch("unload_adapter", body, request)

    def _model_of(self, name):
        return self.model_names[0] if self.endpoints.adapters.serves(name) else None

    async def _complete(self, endpoint, name, body, request_id):
        return await getattr(self, endpoint)(body, request_id)

    def _events(self, endpoint, name, body, request_id):
        return getattr(self, f"{endpoint}_stream")(body, request_id)


@serve.deployment
@serve.ingress(gateway_api)
class Gateway(Front):
    """The HTTP front for several models: auth, validation, routing by ``model``, request metrics."""

    def __init__(self, models: dict, key_digests: list, retry_after_s: float, max_in_flight: int,
                 refuse_status: int = 503, max_request_bytes: int = 2 * 2**20, request_log: str | None = None):
        self.models = models
        self.model_names = sorted(models)
        _own_front(gateway_api, key_digests, retry_after_s, self, max_in_flight, refuse_status, max_request_bytes,
                   request_log)

    @gateway_api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "models": self.model_names}

    @gateway_api.get("/v1/models")
    async def list_models(self) -> dict:
        entries = {}
        for _, h in sorted(self.models.items()):
            entries.update(await h.info.remote())
        return responses.models_body(entries)

    @gateway_api.post("/v1/completions")
    async def http_completions(self, body: CompletionRequest, request: Request):
        return await self._dispatch("completions", body, request)

    @gateway_api.post("/v1/chat/completions")
    async def http_chat(self, body: ChatCompletionRequest, request: Request):
        return await self._dispatch("chat", body, request)

    @gateway_api.post("/v1/embeddings")
    async def http_embeddings(self, body: EmbeddingRequest, request: Request):
        return await self._dispatch("embeddings", body, request)

    @gateway_api.post("/v1/load_lora_adapter")
    async def http_load_adapter(self, body: LoadAdapterRequest, request: Request):
        return await self._dispatch("load_adapter", body, request)

    @gateway_api.post("/v1/unload_lora_adapter")
    async def http_unload_adapter(self, body: UnloadAdapterRequest, request: Request):
        return await self._dispatch("unload_adapter", body, request)

    async def _complete(self, endpoint, name, body, request_id):
        return await getattr(self.models[name], endpoint).remote(body, request_id)

    def _events(self, endpoint, name, body, request_id):
        return getattr(self.models[name].options(stream=True), f"{endpoint}_stream").remote(body, request_id)


# ---------------------------------------------------------------- building the application

def _deployment_name(model: str) -> str:
    return "model-" + re.sub(r"[^A-Za-z0-9_.-]", "_", model)


def _limits(opts: ServeOptions, front_in_flight: int | None) -> dict:
    """Serve's queue limits. A front admits ``front_in_flight`` requests itself (its 503 is OpenAI-shaped);
    Serve's own limits sit above that, a bound on requests waiting for a replica, not a second policy.
    Deployments behind the gateway keep the configured limits: their refusals become the gateway's 503."""
    ongoing, queued = opts.max_ongoing_requests, opts.max_queued_requests
    if front_in_flight is not None:
        ongoing = queued = 4 * front_in_flight + 16
    return {"max_ongoing_requests": ongoing, "max_queued_requests": queued,
            "logging_config": {"encoding": "JSON", "enable_access_log": False},
            "backpressure_config": BackpressureConfig(status_code=opts.backpressure_status,
                                                      retry_after_s=opts.retry_after_s)}


def _model_deployment(name: str, model_dir: str, opts: ServeOptions, digests: list[str], front: bool):
    """A model's deployment: the front when it is the only model, else behind the gateway."""
    a = opts.autoscaling
    scaling = {"num_replicas": a.min_replicas}
    if a.max_replicas > a.min_replicas:
        scaling = {"autoscaling_config": {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                          "target_ongoing_requests": a.target_ongoing_requests,
                                          "upscale_delay_s": a.upscale_delay_s,
                                          "downscale_delay_s": a.downscale_delay_s,
                                          "metrics_interval_s": a.metrics_interval_s,
                                          "look_back_period_s": a.look_back_period_s}}
    options = cfgmod.to_dict(opts)
    options.update(api_keys=[], api_keys_file=None)  # replicas never see a key, only its digest
    return (ModelFront if front else ModelServer).options(
        name=_deployment_name(name), ray_actor_options={"num_cpus": opts.replica_cpus, "num_gpus": opts.replica_gpus},
        graceful_shutdown_timeout_s=120,
        graceful_shutdown_wait_loop_s=1, health_check_period_s=2,
        **_limits(opts, opts.max_ongoing_requests + opts.max_queued_requests if front else None), **scaling,
    ).bind(name, model_dir, options, digests, opts.retry_after_s)


def build_app(cfg: ServeConfig):
    """The Serve application for ``cfg`` (runnable with ``serve.run``; running it again updates in place)."""
    opts = cfg.serve
    models = catalog.served_models(cfg)
    for name, model_dir in models.items():
        if not (Path(storage.local_dir(model_dir)) / "model.onnx").is_file():
            raise FileNotFoundError(f"model {name}: {model_dir} has no model.onnx; serve takes `lmforge export` "
                                    "outputs")
    digests = [auth.digest(k) for k in auth.load_keys(opts.api_keys, opts.api_keys_env, opts.api_keys_file)]
    deployments = {name: _model_deployment(name, d, opts, digests, front=len(models) == 1)
                   for name, d in models.items()}
    if len(deployments) == 1:
        return next(iter(deployments.values()))  # the model is its own front: one process less per token
    in_flight = len(deployments) * (opts.max_ongoing_requests + opts.max_queued_requests)
    return Gateway.options(
        num_replicas=opts.ingress_replicas, ray_actor_options={"num_cpus": opts.ingress_cpus},
        **_limits(opts, in_flight),
    ).bind(deployments, digests, opts.retry_after_s, in_flight, opts.backpressure_status, opts.max_request_bytes,
           opts.request_log)


def app_builder(args: dict):
    """For ``serve deploy`` / ``serve run`` with a config file: ``args`` are ``lmforge serve``'s keys."""
    return build_app(cfgmod.from_dict(ServeConfig, args))
