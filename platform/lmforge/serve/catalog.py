"""The models a server serves: their names, export dirs, and what ``/v1/models`` says of each."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lmforge import storage
from lmforge.serve.config import ServeConfig


def model_info(model_dir: str) -> dict:
    """What /v1/models says of a served model: its version (a fingerprint of the export) and its dir."""
    path = Path(model_dir)
    return {"version": fingerprint(path), "root": str(path), "max_model_len": _context(path),
            "created": int((path / "model.onnx").stat().st_mtime)}


def fingerprint(path: Path) -> str:
    """Identifies an export: its report, config and graph size (a new export of anything differs)."""
    h = hashlib.sha256()
    for name in ("export.json", "config.json"):
        if (path / name).is_file():
            h.update((path / name).read_bytes())
    h.update(str((path / "model.onnx").stat().st_size).encode())
    return h.hexdigest()[:12]


def _context(path: Path) -> int | None:
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    return config.get("max_position_embeddings") or config.get("n_positions")


def default_model_name(model_dir: str) -> str:
    """``runs/quickstart/onnx`` -> ``quickstart-onnx``: the run's name plus the artifact's."""
    path = Path(model_dir)
    return f"{path.parent.name}-{path.name}" if path.parent.name else path.name


def served_models(cfg: ServeConfig) -> dict[str, str]:
    """Served name -> absolute export dir: ``serve.models``, plus ``model`` under ``serve.model_name``."""
    # replicas run in another directory; URIs stay as they are
    models = {name: storage.absolute(d) for name, d in cfg.serve.models.items()}
    if cfg.model:
        path = storage.absolute(cfg.model)
        models[cfg.serve.model_name or default_model_name(path)] = path
    return models
