"""What every stage shares: skip-if-finished, atomic publishing of an output dir, logging set-up.

A finished output's ``.done`` marker holds a run id and the run ids of the stage outputs it read (its
registry ``inputs``), and the state of the raw files it read (prepare's corpus): when an upstream stage
runs again, or a corpus file changes, everything downstream of it no longer counts as finished, though
its own config did not change.

A stage builds its output in ``<output>.partial/`` and renames it into place only when it finished,
so a crashed run never leaves a half-written output that a later stage would trust. An ``s3://`` output
is built in a local staging dir (this node's mirror of it, :func:`lmforge.storage.mirror_path`) and
published by uploading it, the ``.done`` marker last. A finished
output whose ``config.yaml`` equals the new resolved config (``force`` and ``ray``, which say how to run
rather than what, aside) is skipped unless ``force`` is set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path

import yaml

from lmforge import config as cfgmod
from lmforge import storage

log = logging.getLogger("lmforge")

DONE_MARKER = ".done"
INPUTS_FILE = ".inputs.json"  # in a partial dir: the upstream runs it was started from


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
    """True when ``output`` holds a completed run of this config (run-control keys aside) made from the
    same upstream runs as this config's inputs are now."""
    marker, written = _read(output, DONE_MARKER), _read(output, "config.yaml")
    if marker is None or written is None or not _same_run(written, cfg):
        return False
    recorded, current = parse_marker(marker)["inputs"], input_runs(cfg)
    if recorded is None:  # a marker from before inputs were recorded: trusted only if it read no stage output
        return not any(v for k, v in current.items() if not k.startswith(RAW_PREFIX))
    return same_inputs(recorded, current)


RAW_PREFIX = "files:"  # input_runs keys of raw files (a corpus), not of upstream stage runs


def same_inputs(recorded: dict, current: dict) -> bool:
    """Whether a run's recorded inputs are the current ones; raw files that cannot be read any more
    (None now: a corpus deleted after it was prepared) are not held against a finished run."""
    keys = set(recorded) | set(current)
    return all(recorded.get(k) == current.get(k) for k in keys
               if not (k.startswith(RAW_PREFIX) and current.get(k) is None))


def _read(output: str | os.PathLike, name: str) -> str | None:
    return storage.read_text(storage.join(os.fspath(output), name))


def parse_marker(text: str) -> dict:
    """A ``.done`` marker as ``{"run": id, "inputs": {key: upstream run id} | None}``."""
    try:
        marker = json.loads(text)
    except ValueError:
        marker = None
    return marker if isinstance(marker, dict) else {"run": text, "inputs": None}


def run_of(path: str) -> str | None:
    """The run id of the finished stage output that holds ``path`` (it, or up to two levels above:
    ``runs/q/train/model`` is in ``runs/q/train``); None when it is not in one (a user's own dir)."""
    found = storage.find_above(path, DONE_MARKER)
    return parse_marker(found[1])["run"] if found else None


def input_runs(cfg) -> dict[str, str | None]:
    """``{input key: the run id of the stage output it names}`` for the stage ``cfg`` configures, and
    the state of the raw files it reads (``files:<key>``, see :func:`lmforge.stages.Stage.raw_inputs`)."""
    from lmforge.stages import STAGES, load

    kind = f"{type(cfg).__module__}:{type(cfg).__qualname__}"
    stage = next((s for s in STAGES.values() if s.config == kind), None)
    runs = {}
    for needed in stage.inputs if stage else ():
        value = cfg
        for part in needed.key.split("."):  # through dataclasses and mappings (a sweep's base)
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if isinstance(value, str) and value:
            runs[needed.key] = run_of(value)
    for name, path in (getattr(cfg, "models", None) or {}).items():  # eval's models, side by side
        runs[f"models.{name}"] = run_of(path)
    if stage and stage.raw_inputs:
        runs.update(load(stage.raw_inputs)(cfg))
    return runs


def _same_run(written: str, cfg) -> bool:
    return identity(yaml.safe_load(written) or {}) == identity(yaml.safe_load(_written(cfg)))


def already_done(cfg, name: str) -> Path | str | None:
    """The stage preamble: the output (a local dir or an ``s3://`` URI) when it already holds a finished
    run of this config and ``force`` is not set, else None."""
    check_output(cfg.output, "output")
    if not getattr(cfg, "force", False) and is_finished(cfg, cfg.output):
        log.info("%s: %s already holds this run; skipping (force=true to redo)", name, cfg.output)
        return cfg.output if storage.is_remote(cfg.output) else Path(cfg.output)
    return None


def resumable(cfg, output: str | os.PathLike) -> bool:
    """Whether the work already in ``output`` (an interrupted run's partial dir, or a finished run whose
    checkpoints would carry over) was made from the upstream runs this config reads now; training from
    checkpoints of a model trained on other data would resume the wrong run."""
    runs, partial = input_runs(cfg), partial_dir(output)
    if partial.is_dir():
        started = partial / INPUTS_FILE
        recorded = json.loads(started.read_text()) if started.is_file() else None
    else:
        marker = _read(output, DONE_MARKER)
        if marker is None:
            return True  # nothing finished here to compare with
        recorded = parse_marker(marker)["inputs"]
    if recorded is None:
        return not any(v for k, v in runs.items() if not k.startswith(RAW_PREFIX))
    return same_inputs(recorded, runs)


def interrupted(cfg, output: str | os.PathLike) -> bool:
    """Whether ``output``'s partial dir holds an interrupted run of this very config (run-control keys
    aside), started from the upstream runs this config reads now: a run to finish, not to start over."""
    written = partial_dir(output) / "config.yaml"
    return written.is_file() and _same_run(written.read_text(), cfg) and resumable(cfg, output)


def staging(output: str | os.PathLike) -> Path:
    """Where an output is built: itself when local, this node's mirror of it when remote."""
    output = os.fspath(output)
    return storage.mirror_path(output) if storage.is_remote(output) else Path(output)


def partial_dir(output: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(staging(output)).rstrip('/')}.partial")


def begin(cfg, output: str | os.PathLike, *, resume: bool = False) -> Path:
    """Open ``<output>.partial/`` for a run, with the resolved config written into it.

    A fresh run starts from an empty dir. With ``resume`` (training), an interrupted run's partial dir is
    kept, or else a finished ``output`` becomes the partial dir again so that its checkpoints carry over;
    either way the dir is published as ``output`` only when this run finishes. (A remote output keeps
    its checkpoints remote, where training resumes from them.)
    """
    partial, out = partial_dir(output), staging(output)
    if not resume:
        shutil.rmtree(partial, ignore_errors=True)
    elif not partial.exists() and out.is_dir():
        out.rename(partial)
        (partial / DONE_MARKER).unlink(missing_ok=True)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "config.yaml").write_text(_written(cfg))
    # the upstream runs this one reads, as they are when it starts; publish puts them in the marker
    (partial / INPUTS_FILE).write_text(json.dumps(input_runs(cfg)))
    return partial


def share_dir(local: Path, uri: str) -> str:
    """Upload ``local`` (inputs a stage made for its own workers, such as rendered rows) to ``uri`` as a
    finished dir of its own (a ``.done`` marker, last), so that workers on any node mirror it; returns
    ``uri``."""
    (local / DONE_MARKER).write_text(json.dumps({"run": uuid.uuid4().hex, "inputs": {}}))
    storage.upload_dir(local, uri, last=DONE_MARKER)
    return uri


def parts_root(output: str, partial: Path) -> str:
    """Where a stage's Ray tasks write its bulky parts: the partial dir, or for a remote output the
    output itself, emptied first and unmarked (no ``.done``) until :func:`publish`."""
    if not storage.is_remote(output):
        return str(partial)
    uri = output.rstrip("/")
    storage.delete_remote(f"{uri}/{DONE_MARKER}")
    for rel in storage.remote_files(uri):
        storage.delete_remote(f"{uri}/{rel}")
    return uri


def publish(partial: Path, output: str | os.PathLike, keep: tuple[str, ...] = ("checkpoints",)) -> Path | str:
    """Mark ``partial`` finished and move it to ``output``, replacing an older run. A remote output is
    uploaded (its old ``.done`` removed first, the new one written last; the ``keep`` sub-dirs, written
    there directly (checkpoints, parts), are left as they are) and the local copy stays as this node's
    staging dir."""
    inputs = partial / INPUTS_FILE
    runs = json.loads(inputs.read_text()) if inputs.is_file() else {}
    inputs.unlink(missing_ok=True)
    # a run id (mirrors of an older run are stale, downstream outputs made from one re-run) and its inputs'
    (partial / DONE_MARKER).write_text(json.dumps({"run": uuid.uuid4().hex, "inputs": runs}))
    output = os.fspath(output)
    if storage.is_remote(output):
        uri = output.rstrip("/")
        storage.delete_remote(f"{uri}/{DONE_MARKER}")
        storage.upload_dir(partial, uri, keep=keep, last=DONE_MARKER)
        log.info("published %s", uri)
    out = staging(output)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return output if storage.is_remote(output) else out


def check_output(path: str, key: str) -> None:
    """Outputs are local paths or ``s3://`` URIs."""
    if "://" in path and not path.startswith("s3://"):
        raise cfgmod.ConfigError(f"{key}: {path!r} must be a local path or an s3:// URI")

