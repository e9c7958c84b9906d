"""What every stage shares: skip-if-finished, atomic publishing of an output dir, logging set-up.

A stage builds its output in ``<output>.partial/`` and renames it into place only when it finished,
so a crashed run never leaves a half-written output that a later stage would trust. A finished
output whose ``config.yaml`` equals the new resolved config is skipped unless ``force`` is set.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path

from lmforge import config as cfgmod

log = logging.getLogger("lmforge")

DONE_MARKER = ".done"


def setup_logging(level: int = logging.INFO) -> None:
    """One plain log format for every command (idempotent)."""
    root = logging.getLogger("lmforge")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def _comparable(cfg) -> str:
    """The resolved config without run-control keys, to decide whether a finished output matches."""
    if dataclasses.is_dataclass(cfg) and any(f.name == "force" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, force=False)
    return cfgmod.dump(cfg)


def is_finished(cfg, output: str | os.PathLike) -> bool:
    """True when ``output`` holds a completed run of exactly this config."""
    out = Path(output)
    marker, written = out / DONE_MARKER, out / "config.yaml"
    return marker.is_file() and written.is_file() and written.read_text() == _comparable(cfg)


def already_done(cfg, name: str) -> Path | None:
    """The stage preamble: reject object-store outputs; return the output dir when it already holds a
    finished run of this config (and ``force`` is not set), else None."""
    require_local(cfg.output, "output")
    if not getattr(cfg, "force", False) and is_finished(cfg, cfg.output):
        log.info("%s: %s already holds this run; skipping (force=true to redo)", name, cfg.output)
        return Path(cfg.output)
    return None


def begin(cfg, output: str | os.PathLike) -> Path:
    """Start a fresh ``<output>.partial/`` dir with the resolved config written into it."""
    partial = Path(f"{os.fspath(output).rstrip('/')}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "config.yaml").write_text(_comparable(cfg))
    return partial


def publish(partial: Path, output: str | os.PathLike) -> Path:
    """Mark ``partial`` finished and move it to ``output``, replacing an older run."""
    (partial / DONE_MARKER).write_text("")
    out = Path(output)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def require_local(path: str, key: str) -> None:
    """Stages that write with local file APIs reject object-store outputs with a clear message."""
    if "://" in path:
        raise cfgmod.ConfigError(f"{key}: {path!r} must be a local path for this stage")
