"""A stage's output and its lifecycle: finished? resumable? begin in ``<output>.partial/``, publish.

A finished output's ``.done`` marker (:class:`Marker`) holds a run id, the run ids of the stage outputs
it read (its ``INPUTS`` and ``read_paths``) and the state of the raw files it read (prepare's corpus):
when an upstream stage runs again, or a corpus file changes, everything downstream of it no longer counts
as finished, though its own config did not change.

A stage builds its output in ``<output>.partial/`` and renames it into place only when it finished, so a
crashed run never leaves a half-written output that a later stage would trust. An ``s3://`` output is
built in a local staging dir (this node's mirror of it, :func:`lmforge.storage.staging`) and published by
uploading it, the ``.done`` marker last. A finished output whose ``config.yaml`` equals the new resolved
config (``force`` and ``ray``, which say how to run rather than what, aside) is skipped unless ``force``.

    out = Output("pretrain", cfg)
    if out.skip():                      # finished with this config, from the same upstream runs
        return out.result()
    partial = out.begin(resume=out.resumable())
    ...                                 # write into partial
    return out.publish()
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import yaml

from lmforge import config as cfgmod
from lmforge import storage, uploads
from lmforge.stages import RUN_CONTROL, STAGES

log = logging.getLogger("lmforge")

DONE_MARKER = ".done"
INPUTS_FILE = ".inputs.json"  # in a partial dir: the upstream runs it was started from
RAW_PREFIX = "files:"  # input keys of raw files (a corpus), not of upstream stage runs


@dataclasses.dataclass
class Marker:
    """What ``.done`` holds: the run's id and ``{input key: upstream run id | raw file state}`` (None in a
    marker from before inputs were recorded)."""

    run: str
    inputs: dict | None

    @classmethod
    def new(cls, inputs: dict) -> Marker:
        return cls(uuid.uuid4().hex, inputs)

    @classmethod
    def parse(cls, text: str) -> Marker:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return cls(data.get("run"), data.get("inputs"))
        return cls(text, None)  # the oldest markers held the run id alone

    def dump(self) -> str:
        return json.dumps({"run": self.run, "inputs": self.inputs})


def same_inputs(recorded: dict | None, current: dict) -> bool:
    """Whether a run's recorded inputs are the current ones. Raw files that cannot be read any more (None
    now: a corpus deleted after it was prepared) are not held against it; a run recorded without inputs
    is trusted only if it read no stage output."""
    if recorded is None:
        return not any(v for k, v in current.items() if not k.startswith(RAW_PREFIX))
    keys = set(recorded) | set(current)
    return all(recorded.get(k) == current.get(k) for k in keys
               if not (k.startswith(RAW_PREFIX) and current.get(k) is None))


def run_of(path: str) -> str | None:
    """The run id of the finished stage output that holds ``path`` (it, or up to two levels above:
    ``runs/q/train/model`` is in ``runs/q/train``); None when it is not in one (a user's own dir, or a
    served model's http(s) endpoint)."""
    if path.startswith(("http://", "https://")):
        return None
    found = storage.find_above(path, DONE_MARKER)
    return Marker.parse(found[1]).run if found else None


def written(cfg) -> str:
    """The resolved config as written to ``config.yaml``: ``force`` is a request, not part of the run."""
    if dataclasses.is_dataclass(cfg) and any(f.name == "force" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, force=False)
    return cfgmod.dump(cfg)


def _identity(text: str) -> dict:
    """What identifies a run: its resolved config without the run-control keys."""
    return {k: v for k, v in (yaml.safe_load(text) or {}).items() if k not in RUN_CONTROL}


class Output:
    """The output of one run of stage ``stage`` with config ``cfg`` (which says where: ``cfg.output``)."""

    def __init__(self, stage: str, cfg):
        self.stage, self.cfg, self.uri = stage, cfg, os.fspath(cfg.output)
        check(self.uri, "output")
        self.staging = storage.staging(self.uri)  # where it is built: itself, or this node's mirror
        self.partial = Path(f"{os.fspath(self.staging).rstrip('/')}.partial")

    def input_runs(self) -> dict[str, str | None]:
        """``{input key: the run id of the stage output it names}``, and the state of the raw files read."""
        stage = STAGES[self.stage]
        paths = {i.key: cfgmod.get_dotted(self.cfg, i.key) for i in stage.inputs}
        if read_paths := stage.hook("read_paths"):
            paths.update(read_paths(self.cfg))
        runs = {key: run_of(path) for key, path in paths.items() if isinstance(path, str) and path}
        if raw_inputs := stage.hook("raw_inputs"):
            runs.update(raw_inputs(self.cfg))
        return runs

    def _read(self, name: str) -> str | None:
        return storage.read_text(storage.join(self.uri, name))

    def _same_config(self, text: str | None) -> bool:
        return text is not None and _identity(text) == _identity(written(self.cfg))

    def finished(self) -> bool:
        """Whether it holds a completed run of this config made from the upstream runs it reads now."""
        marker = self._read(DONE_MARKER)
        return (marker is not None and self._same_config(self._read("config.yaml"))
                and same_inputs(Marker.parse(marker).inputs, self.input_runs()))

    def skip(self) -> bool:
        """The stage preamble: True (and a log line) when it is finished and ``force`` is not set."""
        if not self.cfg.force and self.finished():
            log.info("%s: %s already holds this run; skipping (force=true to redo)", self.stage, self.uri)
            return True
        return False

    def result(self) -> Path | str:
        """What a stage returns: the local dir, or the ``s3://`` URI."""
        return storage.result(self.uri)

    def resumable(self) -> bool:
        """Whether the work already here (an interrupted run's partial dir, or a finished run whose
        checkpoints would carry over) was made from the upstream runs this config reads now: training from
        checkpoints of a model trained on other data would resume the wrong run."""
        if self.partial.is_dir():
            started = self.partial / INPUTS_FILE
            recorded = json.loads(started.read_text()) if started.is_file() else None
        elif (marker := self._read(DONE_MARKER)) is not None:
            recorded = Marker.parse(marker).inputs
        else:
            return True  # nothing here to compare with
        return same_inputs(recorded, self.input_runs())

    def interrupted(self) -> bool:
        """Whether the partial dir holds an interrupted run of this very config (run-control keys aside),
        started from the upstream runs it reads now: a run to finish, not to start over."""
        config = self.partial / "config.yaml"
        return config.is_file() and self._same_config(config.read_text()) and self.resumable()

    def begin(self, *, resume: bool = False) -> Path:
        """Open the partial dir for a run, with the resolved config written into it.

        A fresh run starts from an empty dir. With ``resume`` (training), an interrupted run's partial dir
        is kept, or else a finished output becomes the partial dir again so that its checkpoints carry
        over; either way it is published only when this run finishes. (A remote output keeps its
        checkpoints remote, where training resumes from them.)
        """
        if not resume:
            shutil.rmtree(self.partial, ignore_errors=True)
        elif not self.partial.exists() and self.staging.is_dir():
            self.staging.rename(self.partial)
            (self.partial / DONE_MARKER).unlink(missing_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)
        (self.partial / "config.yaml").write_text(written(self.cfg))
        # the upstream runs this one reads, as they are when it starts; publish puts them in the marker
        (self.partial / INPUTS_FILE).write_text(json.dumps(self.input_runs()))
        return self.partial

    def durable_root(self) -> str:
        """Where a run writes what workers on any node must reach (checkpoints, shared rows): the partial
        dir, or for a remote output the output itself."""
        return storage.remote_or(self.uri, str(self.partial.resolve()))

    def parts_root(self) -> str:
        """Where the stage's Ray tasks write its bulky parts: :meth:`durable_root`; a remote one emptied
        first and unmarked (no ``.done``) until :meth:`publish`."""
        root = self.durable_root()
        uploads.empty_remote(root)
        return root

    def publish(self, keep: tuple[str, ...] = ("checkpoints",)) -> Path | str:
        """Mark the partial dir finished and move it into place, replacing an older run. A remote output
        is uploaded (its old ``.done`` removed first, the new one written last; the ``keep`` sub-dirs,
        written there directly (checkpoints, parts), are left as they are) and the local copy stays as
        this node's staging dir."""
        inputs = self.partial / INPUTS_FILE
        runs = json.loads(inputs.read_text()) if inputs.is_file() else {}
        inputs.unlink(missing_ok=True)
        # a run id (mirrors of an older run are stale, downstream outputs made from one re-run) and its inputs'
        (self.partial / DONE_MARKER).write_text(Marker.new(runs).dump())
        if uploads.publish_remote(self.partial, self.uri, keep=keep, marker=DONE_MARKER):
            log.info("published %s", self.uri)
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.partial.rename(self.staging)
        return self.result()


def share_dir(local: Path, root: str) -> str:
    """Where workers on any node reach ``local`` (inputs a stage made for its own workers, such as rendered
    rows): under a remote ``root``, uploaded as a finished dir of its own (a ``.done`` marker, last) and
    its URI; else ``local`` itself, absolute."""
    uri = storage.join(root, local.name)
    (local / DONE_MARKER).write_text(Marker.new({}).dump())
    return uri if uploads.publish_remote(local, uri, keep=(), marker=DONE_MARKER) else str(local.resolve())


def check(path: str, key: str) -> None:
    """Outputs are local paths or ``s3://`` URIs."""
    if not path:
        raise cfgmod.ConfigError(f"{key}: must be a directory path or an s3:// URI")
    if not storage.writable(path):
        raise cfgmod.ConfigError(f"{key}: {path!r} must be a local path or an s3:// URI")

