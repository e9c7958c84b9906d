"""Progress a person can follow in any log: ``done/total unit, rate, time left``, at most one line per
``every`` seconds (and the last one), so a log file that is not a terminal is not flooded. No Ray.

Training has its own per-step lines (:mod:`lmforge.train.progress`); evaluation and sweeps use this.
"""

from __future__ import annotations

import logging
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

    def __init__(self, log: logging.Logger, label: str, total: int, unit: str, *, every: float = 10.0,
                 bound: bool = False, clock=time.monotonic):
        self.log, self.label, self.total, self.unit = log, label, total, unit
        self.every, self.bound, self.clock = every, bound, clock
        self.start = clock()
        self.done = 0
        self._last: float | None = None  # when the last line was logged

    def add(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if done >= self.total or self._last is None or now - self._last >= self.every:
            self._last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.start
        parts = [f"{self.label}: {self.done}/{self.total} {self.unit}"]
        if self.done and elapsed > 0:
            rate = self.done / elapsed
            parts.append(f"{rate:.3g}/s")
            if self.done < self.total:
                left = duration((self.total - self.done) / rate)
                parts.append(f"{'at most ' if self.bound else ''}{left} left")
            else:
                parts.append(f"done in {duration(elapsed)}")
        return ", ".join(parts)
