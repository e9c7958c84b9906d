"""The HTTP front shared by the serving deployments: one FastAPI app per front, with OpenAI-shaped
errors everywhere, authentication before a body is read, a count of every response, and the routing
of a request to a model (``Front``). The Ray Serve classes are in :mod:`lmforge.serve.app`.
"""

# No `from __future__ import annotations`: Serve's ingress wrapper hides string annotations from FastAPI.

import re
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from lmforge.serve import auth, responses
from lmforge.serve.openai_api import error_body


def make_api() -> FastAPI:
    """A FastAPI app with lmforge's error handlers and its auth-and-count middleware (``app.state`` holds
    the key digests and metrics, set by the front that owns it)."""
    api = FastAPI(title="lmforge", description="OpenAI-compatible completions, chat and embeddings, served by lmforge",
                  version="1")
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(Exception, _unexpected)
    api.middleware("http")(_authenticate_and_count)
    api.state.key_digests, api.state.metrics, api.state.max_request_bytes = [], None, 2 * 2**20
    api.state.request_log = None
    return api


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


# What a field accepts, for the fields whose type is a union (pydantic reports one error per member).
ACCEPTS = {"prompt": "a string, a list of strings, a list of token ids or a list of lists of token ids",
           "stop": "a string or a list of up to 4 strings", "content": "a string or a list of text parts"}


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return _error(400, "the request body is not valid JSON")
    # pydantic's location, less "body" and the union members it tried ("str", "list[int]", ...)
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _UNION_MEMBER.match(str(p))]
    param = ".".join(loc) or None
    field = next((p for p in reversed(loc) if not p.isdigit()), None)
    message = f"must be {ACCEPTS[field]}" if field in ACCEPTS else first.get("msg", "invalid request")
    return _error(400, f"{param or 'body'}: {message}", param=param)


_UNION_MEMBER = re.compile(r"^(str|int|float|bool|[a-z-]+\[.*\])$")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A server fault, never a client's: the body says so in OpenAI's shape (details stay in the logs)."""
    return _error(500, "the server failed to handle this request", "server_error", code="internal_error")


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else
                  "invalid_request_error", headers=getattr(exc, "headers", None))


ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/embeddings": "embeddings",
             "/v1/models": "models", "/v1/load_lora_adapter": "load_lora_adapter",
             "/v1/unload_lora_adapter": "unload_lora_adapter"}
OPEN_PATHS = ("/healthz",)  # the only routes without a key: load balancers and Serve probe them


def _route_of(path: str) -> str:
    """The route a path names, whatever prefix it is served under (Serve keeps a ``route_prefix`` in the
    path): ``/api/v1/models`` -> ``/v1/models``."""
    path = path.rstrip("/") or "/"
    for route in (*ENDPOINTS, *OPEN_PATHS):
        if path.endswith(route):
            return route
    return path


async def _authenticate_and_count(request: Request, call_next):
    """Every route but ``/healthz`` needs a key when keys are configured, whatever its prefix, and is
    checked before the body is read; a body over ``max_request_bytes`` is refused (413) unread; every
    response is counted by endpoint, model and status, a stream when its last byte is sent."""
    start, state = time.perf_counter(), request.app.state
    route = _route_of(request.url.path)
    endpoint = ENDPOINTS.get(route, "other")
    if route not in OPEN_PATHS and not auth.authorized(request.headers.get("authorization"), state.key_digests):
        response = _error(401, "invalid or missing API key (Authorization: Bearer <key>)", "authentication_error",
                          code="invalid_api_key")
    elif _body_too_large(request, state.max_request_bytes):
        response = _error(413, f"the request body is over this server's limit of {state.max_request_bytes} bytes",
                          code="request_too_large")
    else:
        response = await call_next(request)
    metrics = state.metrics
    if metrics is None or endpoint == "other":
        return response

    def record() -> None:
        model = getattr(request.state, "model", None) or "-"
        metrics.request(endpoint, model, response.status_code, time.perf_counter() - start)
        if getattr(state, "request_log", None) and response.status_code >= 400:  # a 200 is the model's to log
            state.request_log.write({"model": model, "endpoint": endpoint, "status": response.status_code})

    if response.headers.get("content-type", "").startswith("text/event-stream"):
        body = response.body_iterator

        async def counted():
            try:
                async for chunk in body:
                    yield chunk
            finally:
                record()

        response.body_iterator = counted()
    else:
        record()
    return response


def _body_too_large(request: Request, limit: int) -> bool:
    """By the declared length, before anything is read. A body sent without a length (chunked) is not
    bounded here: the HTTP server in front (Serve's proxy, uvicorn) buffers it."""
    length = request.headers.get("content-length")
    return bool(length and length.isdigit() and int(length) > limit)


def _overload_status(e: BaseException, refuse_status: int) -> int | None:
    """Errors that say "try again", and the status to say it with: a full queue is a refusal
    (``serve.backpressure_status``: 503 or 429), a replica that died or is restarting is a 503; None for
    errors that say "you erred" or "we erred"."""
    from ray import exceptions as rx
    from ray.serve.exceptions import BackPressureError

    from lmforge.generate.engine import EngineFullError

    if isinstance(e, (BackPressureError, EngineFullError)):
        return refuse_status
    if isinstance(e, (rx.RayActorError, rx.ActorUnavailableError, rx.ActorDiedError)):
        return 503
    return None


class Front:
    """Routing by the request's ``model`` and turning results into responses; a subclass says how a
    model is reached (``_complete``: a ``(status, body)``; ``_events``: the stream, first item None or
    an error ``(status, body)``)."""

    model_names: list[str]
    retry_after: str = "1"
    max_in_flight: int = 1 << 30  # ongoing + queued requests this replica takes; more are refused
    refuse_status: int = 503  # serve.backpressure_status
    in_flight: int = 0

    async def _dispatch(self, endpoint: str, body, request: Request):
        """Admission first: past ``max_in_flight`` a refusal (``refuse_status``, OpenAI-shaped, with
        Retry-After) instead of a longer queue."""
        if self.in_flight >= self.max_in_flight:
            return self._overloaded(self.refuse_status)
        self.in_flight += 1
        response = None
        try:
            response = await self._route(endpoint, body, request)
        finally:
            if isinstance(response, StreamingResponse):  # held until its last event is sent
                response.body_iterator = self._release_after(response.body_iterator)
            else:
                self.in_flight -= 1
        return response

    async def _release_after(self, events):
        try:
            async for event in events:
                yield event
        finally:
            self.in_flight -= 1

    def _overloaded(self, status: int) -> JSONResponse:
        kind = "rate_limit_error" if status == 429 else "server_error"  # OpenAI's types for 429 and 503
        return _error(status, "the server is overloaded or a replica restarted; retry shortly", kind,
                      code="overloaded", headers={"Retry-After": self.retry_after})

    def _model_of(self, name: str) -> str | None:
        """The served model a request's ``model`` goes to: the model, or ``<model>:<adapter>`` (whether
        the adapter exists is the model's replica's to say)."""
        return next((m for m in self.model_names if name == m or name.startswith(f"{m}:")), None)

    async def _route(self, endpoint: str, body, request: Request):
        served = ", ".join(sorted(self.model_names))
        if body.model is None and len(self.model_names) != 1:
            return _error(400, f"model: required (served: {served})", param="model")
        name = self._model_of(body.model) if body.model is not None else self.model_names[0]
        if name is None:
            return _error(404, f"The model `{body.model}` does not exist (served: {served})", param="model",
                          code="model_not_found")
        request.state.model = name  # the metrics' label: served models only, whatever a client sends
        request_id = responses.new_id({"completions": "cmpl", "embeddings": "embd"}.get(endpoint, "chatcmpl"))
        try:
            if body.stream:
                events = self._events(endpoint, name, body, request_id)
                first = await events.__anext__()  # an error the request caused comes before any event
                if first is not None:
                    return JSONResponse(first[1], status_code=first[0])
                return StreamingResponse(events, media_type="text/event-stream")
            status, payload = await self._complete(endpoint, name, body, request_id)
        except Exception as e:
            if (status := _overload_status(e, self.refuse_status)) is None:
                raise
            return self._overloaded(status)
        return JSONResponse(payload, status_code=status)
