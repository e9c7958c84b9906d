"""Progress lines for logs that are not a terminal: throttled, with a rate and the time left."""

import logging

from lmforge.progress import Ticker, duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_one_line_per_interval_and_always_the_last(caplog):
    clock = Clock()
    ticker = Ticker(logging.getLogger("lmforge.test"), "eval: base", 100, "requests", every=10, clock=clock)
    caplog.set_level(logging.INFO, logger="lmforge.test")
    for done in range(1, 101):
        clock.now = done * 0.5  # 2 requests/s: 50 s in all
        ticker.update(done)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6  # at 0.5 s (the first), then every 10 s (20 requests), and the last
    assert lines[0] == "eval: base: 1/100 requests, 2/s, 0m49s left"
    assert lines[1] == "eval: base: 21/100 requests, 2/s, 0m39s left"
    assert lines[-1] == "eval: base: 100/100 requests, 2/s, done in 0m50s"


def test_an_upper_bound_says_at_most():
    clock = Clock()
    ticker = Ticker(logging.getLogger("lmforge.test"), "tune", 80, "trial steps", bound=True, clock=clock)
    assert ticker.line() == "tune: 0/80 trial steps"  # no rate before any work
    clock.now = 20.0
    ticker.done = 20
    assert ticker.line() == "tune: 20/80 trial steps, 1/s, at most 1m00s left"


def test_duration():
    assert [duration(s) for s in (0, 59.9, 61, 3600, 7385, -3)] == ["0m00s", "0m59s", "1m01s", "1h00m", "2h03m",
                                                                     "0m00s"]
