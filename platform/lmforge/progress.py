"""Progress a person can follow in any log: ``done/total unit, rate, time left``, at most one line per
``every`` seconds (and the last one), so a log file that is not a terminal is not flooded. No Ray.

Training has its own per-step lines (:mod:`lmforge.train.progress`); evaluation and sweeps use this.
"""

from __future__ import annotations

import logging
import threading
import time


def duration(seconds: float) -> str:
    """``1m05s``, ``2h03m``: short enough for a log line."""
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


class Ticker:
    """Counts work done against a total and logs ``<label>: 120/300 requests, 5.2/s, 0m35s left``.

    ``bound=True`` says the total is an upper bound (a sweep's trials may be stopped early), so the time
    left is written as "at most".
    """

    def __init__(self, log: logging.Logger, label: str, total: float, unit: str, *, every: float = 10.0,
                 bound: bool = False, scale: float = 1.0, clock=time.monotonic):
        self.log, self.label, self.total, self.unit = log, label, total, unit
        self.every, self.bound, self.scale, self.clock = every, bound, scale, clock
        self.start = clock()
        self.done: float = 0
        self.note = ""  # said after the count (prepare: files and documents so far)
        self._last: float | None = None  # when the last line was logged

    def add(self, n: float = 1) -> None:
        self.update(self.done + n)

    def update(self, done: float) -> None:
        self.done = done
        now = self.clock()
        if done >= self.total or self._last is None or now - self._last >= self.every:
            self._last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.start
        parts = [f"{self.label}: {self._count(self.done)}/{self._count(self.total)} {self.unit}"]
        if self.note:
            parts.append(self.note)
        if self.done and elapsed > 0:
            rate = self.done / elapsed
            parts.append(f"{rate / self.scale:.3g} {self.unit}/s" if self.scale != 1 else f"{rate:.3g}/s")
            if self.done < self.total:
                left = duration((self.total - self.done) / rate)
                parts.append(f"{'at most ' if self.bound else ''}{left} left")
            else:
                parts.append(f"done in {duration(elapsed)}")
        return ", ".join(parts)

    def _count(self, n: float) -> str:
        return f"{n / self.scale:.4g}" if self.scale != 1 else str(int(n))


class RayProgress:
    """A Ray queue that tasks and workers on any node put messages on, drained by a thread of the driver
    into ``sink.put(message)`` (a training run's ``MetricsLog``, prepare's files read); ``close()``
    drains what is left and closes the sink."""

    def __init__(self, sink):
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.sink = sink
        # num_cpus=0: an actor needs a free CPU to be placed by default, and the work holds them all.
        # On the driver's node, as Ray Train's controller is: a queue on a worker node would die with it,
        # and a node loss that the work survives must not take the progress reports down with it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="lmforge-progress", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                self.sink.put(self.queue.get(timeout=0.5))
            except Empty:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for message in self.queue.get_nowait_batch(self.queue.qsize()):
            self.sink.put(message)
        self.queue.shutdown()
        self.sink.close()
