"""Ray Serve glue: the FastAPI ingress deployment and ``build_app(cfg) -> Application``.

Endpoints: ``GET /healthz``, ``GET /v1/models``, ``POST /v1/completions`` (OpenAI shape, ``stream``
as server-sent events). Each replica holds one :class:`OnnxGenerator`. With ``serve.api_keys`` set,
requests need ``Authorization: Bearer <key>``.
"""

# No `from __future__ import annotations`: Serve's ingress wrapper hides string annotations from FastAPI.

import json
import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from lmforge.generate.onnx_generator import OnnxGenerator
from lmforge.serve import openai_api
from lmforge.serve.config import ServeConfig
from lmforge.serve.openai_api import CompletionRequest

api = FastAPI(title="lmforge", description="OpenAI-compatible completions served by lmforge")


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return JSONResponse(openai_api.error_body(f"{param}: {first.get('msg', 'invalid request')}",
                                              param=param), status_code=400)


class _HTTPError(Exception):
    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body


@api.exception_handler(_HTTPError)
async def _http_error(request: Request, exc: _HTTPError) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status)


@serve.deployment(name="lmforge")
@serve.ingress(api)
class CompletionServer:
    """One replica: an onnxruntime generator behind the OpenAI routes."""

    def __init__(self, model_dir: str, model_name: str, api_keys: list[str], intra_op_threads: int,
                 max_tokens_limit: int):
        self.generator = OnnxGenerator(model_dir, intra_op_threads=intra_op_threads)
        self.model_name = model_name
        self.api_keys = list(api_keys)
        self.max_tokens_limit = max_tokens_limit

    def _authorize(self, request: Request) -> None:
        if not self.api_keys:
            return
        header = request.headers.get("authorization", "")
        token = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        if not any(secrets.compare_digest(token, k) for k in self.api_keys):
            raise _HTTPError(401, openai_api.error_body("invalid or missing API key",
                                                        "authentication_error", code="invalid_api_key"))

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "model": self.model_name}

    @api.get("/v1/models")
    def models(self, request: Request) -> dict:
        self._authorize(request)
        return openai_api.models_body(self.model_name)

    @api.post("/v1/completions")
    def completions(self, body: CompletionRequest, request: Request):
        self._authorize(request)
        if body.model not in (None, self.model_name):
            raise _HTTPError(404, openai_api.error_body(f"model {body.model!r} is not served here",
                                                        param="model", code="model_not_found"))
        if body.max_tokens > self.max_tokens_limit:
            raise _HTTPError(400, openai_api.error_body(
                f"max_tokens: {body.max_tokens} exceeds this server's limit {self.max_tokens_limit}",
                param="max_tokens"))
        if body.stream:
            return StreamingResponse(self._stream(body), media_type="text/event-stream")
        completions = self.generator.generate(body.prompts(), body.sampling())
        return openai_api.completion_body(self.model_name, completions)

    def _stream(self, body: CompletionRequest):
        """Server-sent events: one chunk per new piece of text, the finish reason last, ``[DONE]``."""
        sent, closed = [""] * len(body.prompts()), set()
        base = openai_api.completion_body(self.model_name, [])
        for step in self.generator.stream(body.prompts(), body.sampling()):
            for i, c in enumerate(step):
                if i in closed:
                    continue
                delta, sent[i] = c.text[len(sent[i]):], c.text
                if c.finish_reason:
                    closed.add(i)
                if delta or c.finish_reason:
                    choice = {"index": i, "text": delta, "logprobs": None, "finish_reason": c.finish_reason}
                    yield f"data: {json.dumps(dict(base, choices=[choice]))}\n\n"
        yield "data: [DONE]\n\n"


def default_model_name(model_dir: str) -> str:
    """``runs/quickstart/onnx`` -> ``quickstart-onnx``: the run's name plus the artifact's."""
    path = Path(model_dir)
    return f"{path.parent.name}-{path.name}" if path.parent.name else path.name


def build_app(cfg: ServeConfig):
    """The Serve application for ``cfg`` (runnable with ``serve.run``)."""
    opts = cfg.serve
    model_dir = str(Path(cfg.model).resolve())
    name = opts.model_name or default_model_name(model_dir)
    scaling = {"num_replicas": opts.autoscaling.min_replicas}
    if opts.autoscaling.max_replicas > opts.autoscaling.min_replicas:
        scaling = {"autoscaling_config": {"min_replicas": opts.autoscaling.min_replicas,
                                          "max_replicas": opts.autoscaling.max_replicas,
                                          "target_ongoing_requests": 2}}
    deployment = CompletionServer.options(ray_actor_options={"num_cpus": opts.replica_cpus}, **scaling)
    return deployment.bind(model_dir, name, opts.api_keys, opts.intra_op_threads, opts.max_tokens_limit)
