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


def test_prepare_counts_files_documents_and_megabytes(caplog):
    """prepare's read + curate, told of each file as a task finishes it: the time left goes by bytes."""
    from lmforge.data.prepare import FilesRead

    sink = FilesRead({"a.jsonl": 3_000_000, "b.jsonl": 1_000_000})
    clock = Clock()
    sink.ticker.clock, sink.ticker.start = clock, 0.0
    caplog.set_level(logging.INFO, logger="lmforge")
    clock.now = 3.0
    sink.put(("a.jsonl", 1200))
    assert caplog.records[-1].getMessage() == (
        "prepare: read + curate: 3/4 MB, 1/2 files, 1,200 documents, 1 MB/s, 0m01s left")
    clock.now = 4.0
    sink.put(("b.jsonl", 300))
    assert caplog.records[-1].getMessage() == (
        "prepare: read + curate: 4/4 MB, 2/2 files, 1,500 documents, 1 MB/s, done in 0m04s")
