"""The engine on a thread of its own, for asyncio servers: submit a request, iterate its outputs.

The thread steps the engine while there is work and sleeps otherwise; requests reach it through
thread-safe queues, so a request arriving mid-step joins at the next step. A caller that stops
iterating (its client disconnected, its task was cancelled) aborts its request, which frees the slot.
No Ray here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncIterator, Callable

from lmforge.generate.engine import Engine, Output, SamplingParams

log = logging.getLogger(__name__)


class AsyncEngine:
    def __init__(self, engine: Engine, on_step: Callable[[Engine], None] = lambda engine: None):
        self.engine, self.on_step = engine, on_step
        self._inbox: collections.deque = collections.deque()  # (id, prompt ids, params, adapter)
        self._aborts: collections.deque = collections.deque()
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)
        self._thread.start()

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                       adapter: str | None = None) -> AsyncIterator[Output]:
        """Outputs of one request (with a loaded LoRA ``adapter``, or the base) as the engine produces them;
        the last has its ``finish_reason``. Raises :class:`~lmforge.generate.engine.ContextLengthError`
        before accepting a request that cannot fit."""
        self.engine.check(prompt_ids, params)
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = (asyncio.get_running_loop(), queue)
        self._inbox.append((request_id, prompt_ids, params, adapter))
        self._wake.set()
        finished = False
        try:
            while not finished:
                out = await queue.get()
                if isinstance(out, BaseException):
                    raise out
                finished = out.finish_reason is not None
                yield out
        finally:
            self._queues.pop(request_id, None)
            if not finished:  # the caller went away: free the slot
                self._aborts.append(request_id)
                self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stopped:
            if not self.engine.has_work() and not self._inbox and not self._aborts:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            while self._inbox:
                request = self._inbox.popleft()
                try:
                    self.engine.add(*request)
                except Exception as e:  # a request the engine refuses fails alone; the loop goes on
                    self._deliver(request[0], e)
            while self._aborts:
                self.engine.abort(self._aborts.popleft())
            try:
                outputs = self.engine.step()
            except Exception as e:  # a failed step fails its requests, not the replica
                log.exception("engine step failed")
                for request_id in self.engine.reset():
                    self._deliver(request_id, RuntimeError(f"generation failed: {e}"))
                continue
            self._deliver_step(outputs)
            self.on_step(self.engine)

    def _deliver(self, request_id: str, item) -> None:
        target = self._queues.get(request_id)
        if target is not None:
            loop, queue = target
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def _deliver_step(self, outputs: list[Output]) -> None:
        """A step's outputs reach each event loop in one wake-up, not one per request: the loop and the
        engine share the cores, and every wake-up costs both."""
        by_loop: dict = {}
        for out in outputs:
            target = self._queues.get(out.request_id)
            if target is not None:
                by_loop.setdefault(target[0], []).append((target[1], out))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_put_all, items)


def _put_all(items: list) -> None:
    for queue, item in items:
        queue.put_nowait(item)
