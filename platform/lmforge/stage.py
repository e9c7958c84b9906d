"""What every stage shares: skip-if-finished, atomic publishing of an output dir, logging set-up.

A stage builds its output in ``<output>.partial/`` and renames it into place only when it finished,
so a crashed run never leaves a half-written output that a later stage would trust. A finished
output whose ``config.yaml`` equals the new resolved config (``force`` and ``ray``, which say how to run
rather than what, aside) is skipped unless ``force`` is set.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path

import yaml

from lmforge import config as cfgmod

log = logging.getLogger("lmforge")

DONE_MARKER = ".done"


def setup_logging(level: int = logging.INFO) -> None:
    """One plain log format for every command (idempotent); no per-file progress bars from the Hugging
    Face libraries (set before they are imported, and inherited by the Ray workers started after)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    root = logging.getLogger("lmforge")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


RUN_CONTROL = ("force", "ray")  # keys that say how to run, not what: a finished run is the same without them


def _written(cfg) -> str:
    """The resolved config as written to ``config.yaml``: ``force`` is a request, not part of the run."""
    if dataclasses.is_dataclass(cfg) and any(f.name == "force" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, force=False)
    return cfgmod.dump(cfg)


def identity(config: dict) -> dict:
    """What identifies a finished run: its resolved config without the run-control keys."""
    return {k: v for k, v in config.items() if k not in RUN_CONTROL}


def is_finished(cfg, output: str | os.PathLike) -> bool:
    """True when ``output`` holds a completed run of this config (run-control keys aside)."""
    out = Path(output)
    marker, written = out / DONE_MARKER, out / "config.yaml"
    if not (marker.is_file() and written.is_file()):
        return False
    return identity(yaml.safe_load(written.read_text()) or {}) == identity(yaml.safe_load(_written(cfg)))


def already_done(cfg, name: str) -> Path | None:
    """The stage preamble: reject object-store outputs; return the output dir when it already holds a
    finished run of this config (and ``force`` is not set), else None."""
    require_local(cfg.output, "output")
    if not getattr(cfg, "force", False) and is_finished(cfg, cfg.output):
        log.info("%s: %s already holds this run; skipping (force=true to redo)", name, cfg.output)
        return Path(cfg.output)
    return None


def partial_dir(output: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(output).rstrip('/')}.partial")


def begin(cfg, output: str | os.PathLike, *, resume: bool = False) -> Path:
    """Open ``<output>.partial/`` for a run, with the resolved config written into it.

    A fresh run starts from an empty dir. With ``resume`` (training), an interrupted run's partial dir is
    kept, or else a finished ``output`` becomes the partial dir again so that its checkpoints carry over;
    either way the dir is published as ``output`` only when this run finishes.
    """
    partial, out = partial_dir(output), Path(output)
    if not resume:
        shutil.rmtree(partial, ignore_errors=True)
    elif not partial.exists() and out.is_dir():
        out.rename(partial)
        (partial / DONE_MARKER).unlink(missing_ok=True)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "config.yaml").write_text(_written(cfg))
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
