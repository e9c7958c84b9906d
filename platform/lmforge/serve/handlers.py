"""The OpenAI endpoints' work for one model, on its engine: no Ray, no HTTP.

:class:`ModelEndpoints` turns a validated request into engine requests (one per prompt and choice, all
running at once), and their outputs into a response body or a stream of server-sent events. Errors a
client caused come back as ``(status, body)`` before any event is sent, never as a 500. Timing and
token counts go to an :class:`Observer` (the Ray glue makes them Prometheus metrics) and to one JSON
log line per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

from lmforge.generate.adapters import AdapterNotFound
from lmforge.generate.async_engine import AsyncEngine
from lmforge.generate.constraints import ConstraintError
from lmforge.generate.engine import ContextLengthError, EngineFullError
from lmforge.serve import responses, tools
from lmforge.serve.config import ServeOptions
from lmforge.serve.lora import ServedAdapters, not_found
from lmforge.serve.observer import Observer, Timer
from lmforge.serve.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RequestError,
    error_body,
)
from lmforge.serve.request_log import RequestLog, prompt_language

# A child of Serve's own logger: in a replica, Serve gives "ray.serve" the handler that writes the replica's
# log file (JSON lines, per the deployment's logging_config); a logger outside it has no handler there
# and its INFO lines were silently dropped.
log = logging.getLogger("ray.serve.lmforge.requests")

Result = tuple[int, dict]  # (HTTP status, JSON body)


class ModelEndpoints:
    def __init__(self, engine: AsyncEngine, name: str, opts: ServeOptions, observer: Observer | None = None,
                 adapters: ServedAdapters | None = None):
        self.engine, self.name, self.opts = engine, name, opts
        model = engine.engine.model
        self.adapters = adapters or ServedAdapters(name, model, str(model.model_dir), None, 0)
        self.tokenizer = engine.engine.model.tokenizer
        self.max_positions = engine.engine.max_context  # the replica's limit (engine.max_context)
        self.request_log = RequestLog(opts.request_log) if opts.request_log else None
        self.observer = observer or Observer()

    # ------------------------------------------------------------------ completions
    def _completion_jobs(self, req: CompletionRequest) -> list[tuple[int, list[int], object, tuple | None]]:
        """(choice index, prompt ids, sampling params, echo) for every prompt x n, validated."""
        req.check()
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        self._check_limits(max_tokens, req.n, req.logprobs)
        jobs = []
        for p, prompt in enumerate(req.prompts()):
            ids = self.tokenizer(prompt, verbose=False).input_ids if isinstance(prompt, str) else prompt
            self._check_ids(ids, "prompt")
            text = prompt if isinstance(prompt, str) else self.tokenizer.decode(ids, skip_special_tokens=True)
            echo = (text, ids) if req.echo else None
            for j in range(req.n):
                params = req.sampling(max_tokens, req.logprobs, prompt_logprobs=req.echo and req.logprobs is not None,
                                      choice=j)
                jobs.append((p * req.n + j, ids, params, echo))
            self.engine.engine.check(ids, jobs[-1][2])  # the context: refused before anything runs
        self._admissible(len(jobs))
        return jobs

    async def completions(self, req: CompletionRequest, request_id: str) -> Result:
        start = time.perf_counter()
        try:
            adapter = await self._adapter(req)
            jobs = self._completion_jobs(req)
            choices = await self._run_all(jobs, request_id, adapter)
        except (RequestError, ContextLengthError, ConstraintError, AdapterNotFound) as e:
            return _client_error(e, "prompt")
        body = [responses.completion_choice(self.tokenizer, c, req.logprobs is not None, echo)
                for c, (_, _, _, echo) in zip(choices, jobs)]
        return 200, self._finish(responses.completion_body, request_id, "completions", body, choices, jobs, req, start)

    async def completions_stream(self, req: CompletionRequest, request_id: str) -> AsyncIterator:
        """First item: ``None`` (the stream starts) or a :data:`Result` (an error); then SSE strings."""
        try:
            adapter = await self._adapter(req)
            jobs = self._completion_jobs(req)
        except (RequestError, ContextLengthError, ConstraintError, AdapterNotFound) as e:
            yield _client_error(e, "prompt")
            return
        yield None

        async for item in self._stream(jobs, request_id, adapter, "completions", req, responses.completion_chunk,
                                       lambda index, out, first: responses.completion_delta(
                                           self.tokenizer, req, jobs[index], out, first)):
            yield item

    # ------------------------------------------------------------------ chat
    def _chat_jobs(self, req: ChatCompletionRequest) -> tuple[list[tuple[int, list[int], object, None]], list[dict]]:
        """The jobs of a chat (as :meth:`_completion_jobs`'), and the functions it may call."""
        req.check()
        fns = tools.functions(req.tools, req.tool_choice)
        ids, extra_stop = tools.prompt(self.tokenizer, req.chat(), fns)
        self._check_ids(ids, "messages")
        requested = req.requested_max_tokens()
        if requested is None:
            room = self.max_positions - len(ids)
            if room < 1:
                raise ContextLengthError(f"This model's maximum context length is {self.max_positions} tokens. "
                                         f"However, your messages resulted in {len(ids)} tokens.")
            max_tokens = min(self.opts.default_max_tokens, self.opts.max_tokens_limit, room)
        else:
            max_tokens = requested
        top = (req.top_logprobs or 0) if req.logprobs else None
        self._check_limits(max_tokens, req.n, top)
        jobs = []
        call = tools.constraint(fns, req.tool_choice)
        for j in range(req.n):
            params = req.sampling(max_tokens, top, choice=j)
            params.stop = params.stop + extra_stop
            if call is not None:
                if params.constraint is not None:
                    raise RequestError("a required tool call and a structured output cannot both constrain the "
                                       "answer", "tool_choice")
                params.constraint = call
            jobs.append((j, ids, params, None))
        self.engine.engine.check(ids, jobs[0][2])
        self._admissible(len(jobs))
        return jobs, fns

    async def chat(self, req: ChatCompletionRequest, request_id: str) -> Result:
        start = time.perf_counter()
        try:
            adapter = await self._adapter(req)
            jobs, fns = self._chat_jobs(req)
            choices = await self._run_all(jobs, request_id, adapter)
        except (RequestError, ContextLengthError, ConstraintError, AdapterNotFound) as e:
            return _client_error(e, "messages")
        body = [tools.with_call(responses.chat_choice(self.tokenizer, c, req.logprobs), fns) for c in choices]
        return 200, self._finish(responses.chat_body, request_id, "chat", body, choices, jobs, req, start)

    async def chat_stream(self, req: ChatCompletionRequest, request_id: str) -> AsyncIterator:
        try:
            adapter = await self._adapter(req)
            jobs, fns = self._chat_jobs(req)
        except (RequestError, ContextLengthError, ConstraintError, AdapterNotFound) as e:
            yield _client_error(e, "messages")
            return
        yield None
        held: dict = {}

        def delta(index, out, first):
            if not fns:
                return responses.chat_delta(self.tokenizer, req, index, out, first)
            return tools.call_delta(held, index, out, fns)  # a call is only known whole: held to the end

        async for item in self._stream(jobs, request_id, adapter, "chat", req, responses.chat_chunk, delta):
            yield item

    # ------------------------------------------------------------------ embeddings
    async def embeddings(self, req: EmbeddingRequest, request_id: str) -> Result:
        """Every input in batched graph calls on a worker thread (the engine's own thread keeps stepping)."""
        start = time.perf_counter()
        model = self.engine.engine.model
        try:
            adapter = await self._adapter(req)
            if model.hidden_size is None:
                raise RequestError(f"model {self.name} cannot embed: its export has no hidden states (export it "
                                   "again with this version)", "model")
            if req.dimensions not in (None, model.hidden_size):
                raise RequestError(f"dimensions: this model's embeddings have {model.hidden_size}", "dimensions")
            inputs = req.inputs()
            if len(inputs) > self.opts.max_embedding_inputs:
                raise RequestError(f"input: {len(inputs)} inputs exceed this server's limit of "
                                   f"{self.opts.max_embedding_inputs}", "input")
            ids = [self.tokenizer(x, verbose=False).input_ids if isinstance(x, str) else x for x in inputs]
            for seq in ids:
                self._check_ids(seq, "input")
                if not seq or len(seq) > self.max_positions:
                    raise ContextLengthError(f"This model's maximum context length is {self.max_positions} "
                                             f"tokens. However, an input has {len(seq)} tokens.")
        except (RequestError, ContextLengthError) as e:
            return _client_error(e, "input")
        vectors = await asyncio.to_thread(model.embed, ids, adapter=adapter)
        tokens = sum(len(seq) for seq in ids)
        self._log(request_id, "embeddings", 200, tokens, 0, time.perf_counter() - start, None, req)
        return 200, responses.embeddings_body(_served(self, req), vectors, req.encoding_format, tokens)

    # ------------------------------------------------------------------ shared
    async def _adapter(self, req) -> str | None:
        """The LoRA adapter the request's ``model`` names, loaded (None: the model itself); 404 if none."""
        name = self.adapters.requested(req.model)
        await self.adapters.ready(name)
        return name

    def _check_limits(self, max_tokens: int, n: int, logprobs: int | None) -> None:
        if max_tokens > self.opts.max_tokens_limit:
            raise RequestError(f"max_tokens: {max_tokens} exceeds this server's limit of {self.opts.max_tokens_limit}",
                               "max_tokens")
        if n > self.opts.max_n:
            raise RequestError(f"n: {n} exceeds this server's limit of {self.opts.max_n}", "n")

    def _admissible(self, sequences: int) -> None:
        """A request's prompts x n are queued together or not at all: more than the engine could ever hold
        is the client's error (400); more than it has room for now is a refusal to retry (Retry-After)."""
        engine = self.engine.engine
        if sequences > engine.capacity:
            raise RequestError(f"prompts x n: {sequences} sequences exceed this server's limit of {engine.capacity}",
                               "n")
        if sequences > engine.room():
            raise EngineFullError(f"{sequences} sequences do not fit the queue now")

    def _check_ids(self, ids: list[int], param: str) -> None:
        vocab = len(self.tokenizer)
        if any(t >= vocab for t in ids):
            raise RequestError(f"{param}: token ids must be below the vocabulary size {vocab}", param)

    async def _run_all(self, jobs, request_id: str, adapter: str | None) -> list[responses.Choice]:
        """Run every job at once (with ``adapter``, or the base); their choices, in job order."""
        async def one(index: int, ids: list[int], params) -> responses.Choice:
            choice, timer = responses.Choice(index), Timer(self.observer)
            async for out in self.engine.generate(f"{request_id}-{index}", ids, params, adapter):
                if out.token_ids:
                    timer.token()
                choice.add(out)
            choice.ttft = timer.ttft
            return choice

        return list(await asyncio.gather(*(one(i, ids, params) for i, ids, params, _ in jobs)))

    async def _stream(self, jobs, request_id: str, adapter: str | None, endpoint: str, req, make_chunk,
                      delta) -> AsyncIterator[str]:
        """Every job's outputs as SSE chunks as they come, then the usage chunk if asked, then [DONE]."""
        queue: asyncio.Queue = asyncio.Queue()
        start, totals, timers, reasons = time.perf_counter(), {}, {}, {}

        async def pump(index: int, ids: list[int], params) -> None:
            first = True
            try:
                async for out in self.engine.generate(f"{request_id}-{index}", ids, params, adapter):
                    await queue.put((index, out, first))
                    first = False
            finally:
                await queue.put((index, None, False))  # done, or failed: the stream learns it either way

        tasks = [asyncio.create_task(pump(i, ids, params)) for i, ids, params, _ in jobs]
        try:
            running = len(tasks)
            while running:
                index, out, first = await queue.get()
                if out is None:
                    running -= 1
                    continue
                if out.token_ids:
                    timers.setdefault(index, Timer(self.observer)).token()
                totals[index] = (out.prompt_tokens, out.completion_tokens)
                if out.finish_reason:
                    reasons[index] = out.finish_reason
                choice = delta(index, out, first)
                if choice is not None:
                    yield f"data: {json.dumps(make_chunk(request_id, _served(self, req), choice))}\n\n"
            for task in tasks:
                task.result()  # a failed job fails the stream
            prompt_tokens = _prompt_total(jobs, totals)
            completion_tokens = sum(c for _, c in totals.values())
            if req.include_usage():
                usage = responses.usage(prompt_tokens, completion_tokens)
                yield f"data: {json.dumps(make_chunk(request_id, _served(self, req), None, usage))}\n\n"
            yield "data: [DONE]\n\n"
            self._log(request_id, endpoint, 200, prompt_tokens, completion_tokens, time.perf_counter() - start,
                      min((t.ttft for t in timers.values() if t.ttft is not None), default=None), req,
                      [reasons.get(i) for i in sorted(totals)])
        finally:
            for task in tasks:
                task.cancel()  # a client that went away: every job's request is aborted

    def _finish(self, make_body, request_id: str, endpoint: str, body: list[dict], choices, jobs, req,
                start: float) -> dict:
        prompt_tokens = _prompt_total(jobs, {c.index: (c.prompt_tokens, c.completion_tokens) for c in choices})
        completion_tokens = sum(c.completion_tokens for c in choices)
        ttft = min((c.ttft for c in choices if c.ttft is not None), default=None)
        self._log(request_id, endpoint, 200, prompt_tokens, completion_tokens, time.perf_counter() - start, ttft, req,
                  [c.finish_reason for c in choices])
        return make_body(request_id, _served(self, req), body, prompt_tokens, completion_tokens)

    def _log(self, request_id: str, endpoint: str, status: int, prompt_tokens: int, completion_tokens: int,
             seconds: float, ttft: float | None, req, finish_reasons: list | None = None) -> None:
        self.observer.finished(endpoint, prompt_tokens, completion_tokens, seconds)
        entry = {"event": "request", "request_id": request_id, "model": _served(self, req), "endpoint": endpoint,
                 "status": status, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "ttft_s": ttft, "stream": req.stream, "n": getattr(req, "n", 1)}
        if self.request_log:
            self.request_log.write({
                "model": entry["model"], "endpoint": endpoint, "status": status, "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens, "finish_reasons": finish_reasons or [],
                "language": prompt_language(_prompt(req)), "user": getattr(req, "user", None)})
        if self.opts.log_prompts:
            entry["prompt"] = _prompt(req)
        log.info(json.dumps(entry, ensure_ascii=False))


def _prompt(req):
    """A chat's messages, a completion's prompt(s), an embedding's input: read only when a log needs it."""
    return req.chat() if hasattr(req, "chat") else req.prompt if hasattr(req, "prompt") else req.input


def _served(endpoints: ModelEndpoints, req) -> str:
    """The name a response carries: the model the request asked for (``<model>:<adapter>`` included)."""
    return req.model or endpoints.name


def _prompt_total(jobs, totals: dict[int, tuple[int, int]]) -> int:
    """Prompt tokens counted once per prompt, not once per choice (as OpenAI counts them)."""
    seen, total = set(), 0
    for index, ids, _, _ in jobs:
        if id(ids) not in seen:
            seen.add(id(ids))
            total += totals.get(index, (len(ids), 0))[0]
    return total


def _client_error(e: Exception, default_param: str) -> Result:
    if isinstance(e, AdapterNotFound):  # unloaded between the check and the engine taking the request
        e = not_found(e)
    if isinstance(e, ContextLengthError):
        return 400, error_body(str(e), param=default_param, code="context_length_exceeded")
    return getattr(e, "status", 400), error_body(str(e), param=e.param, code=e.code)
