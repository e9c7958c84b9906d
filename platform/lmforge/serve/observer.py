"""What a request's timing and token counts are told to: the Ray glue makes them Prometheus metrics
(:mod:`lmforge.serve.metrics`); the default records nothing. No Ray."""

from __future__ import annotations

import time


class Observer:
    """Hooks for metrics; the default records nothing."""

    def first_token(self, seconds: float) -> None: ...
    def next_token(self, seconds: float) -> None: ...
    def finished(self, endpoint: str, prompt_tokens: int, completion_tokens: int, seconds: float) -> None: ...


class Timer:
    """A request's token times: the first token's latency, then each gap, told to the observer."""

    def __init__(self, observer: Observer):
        self.observer, self.start, self.last = observer, time.perf_counter(), None
        self.ttft: float | None = None

    def token(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.ttft = now - self.start
            self.observer.first_token(self.ttft)
        else:
            self.observer.next_token(now - self.last)
        self.last = now
