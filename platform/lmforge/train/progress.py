"""Live training metrics: ``metrics.jsonl`` and TensorBoard events that grow as training goes, and one
readable log line per logged step (with the time left).

The driver owns the files; the rank-0 worker sends it messages: ``("history", rows)`` when it starts
(the rows its checkpoint already holds, so the file is rewritten and a resumed run lists every step
once) and ``("row", row)`` after each logged step. In a bare run the worker calls :class:`MetricsLog`
directly; under Ray Train the messages travel through a Ray queue (:class:`RayProgress`), so the files
are written where the driver runs, whichever node rank 0 is on.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lmforge.progress import RayProgress, duration

__all__ = ["METRICS_FILE", "MetricsLog", "RayProgress", "TENSORBOARD_DIR"]

log = logging.getLogger("lmforge.train")

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """``metrics.jsonl`` + TensorBoard event files in ``out_dir``, and the progress log lines."""

    def __init__(self, out_dir: Path, stage: str, max_steps: int):
        self.path, self.stage, self.max_steps = Path(out_dir) / METRICS_FILE, stage, max_steps
        self.tb_dir = Path(out_dir) / TENSORBOARD_DIR
        self._tb = None
        self._clock: tuple[float, int] | None = None  # (time, step) when this process saw training start
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def put(self, message: tuple[str, object]) -> None:
        kind, payload = message
        if kind == "history":
            self._restart(payload)
        else:
            self._append(payload)

    def _restart(self, rows: list[dict]) -> None:
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        last = rows[-1]["step"] if rows else 0
        self._clock = (time.monotonic(), last)
        self._open_tensorboard(purge_step=last + 1)

    def _append(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])
            self._tb.flush()
        log.info("%s", self.line(row))

    def line(self, row: dict) -> str:
        parts = [f"{self.stage} step {row['step']}/{self.max_steps}", f"loss {row['loss']:.4f}"]
        if "val_loss" in row:
            parts.append(f"val_loss {row['val_loss']:.4f}")
        if "tokens_per_s" in row:
            parts.append(f"{row['tokens_per_s']:.0f} tok/s")
        if "mfu" in row:
            parts.append(f"mfu {row['mfu']:.1%}")
        if self._clock and row["step"] > self._clock[1]:
            per_step = (time.monotonic() - self._clock[0]) / (row["step"] - self._clock[1])
            parts.append(f"{duration(per_step * (self.max_steps - row['step']))} left")
        return " | ".join(parts)

    def _open_tensorboard(self, purge_step: int) -> None:
        """Event files beside metrics.jsonl (``tensorboard --logdir``); a resumed run purges the steps
        after its checkpoint, as the file does."""
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # optional: metrics.jsonl carries the same rows
            return
        self.close()
        self._tb = SummaryWriter(str(self.tb_dir), purge_step=purge_step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
