"""Checkpoint I/O, local or ``s3://``: list, pick the best, prune, write, read back. No Ray here.

A checkpoint is a dir ``<root>/checkpoints/step_<N>/`` holding ``model/`` (an HF dir with the
tokenizer), ``optimizer.pt``, ``rng.pt`` and ``state.json`` (the loop state: step, data position,
metrics history, best val_loss). Under Ray Train, Ray persists and registers it; bare runs write it
here under a temporary name and rename it into place.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch

from lmforge import storage, uploads

STATE = "state.json"  # in every checkpoint; written (or uploaded) last
RUN_NAME = "checkpoints"  # checkpoints land in <checkpoint root>/checkpoints/step_N (Ray Train's run name)


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def step_of(path: str | Path) -> int:
    return int(str(path).rstrip("/").rsplit("_", 1)[1])


def list_checkpoints(root: str) -> list[str]:
    """Checkpoint dirs (``.../step_N``) under a root, oldest first; local or s3."""
    from pyarrow import fs as pafs

    filesystem, path = storage.filesystem(f"{root}/{RUN_NAME}")
    infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    dirs = [i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("step_")]
    # a dir whose state.json (written last) is missing was cut off while it was written: not a checkpoint
    ckpts = [storage.with_scheme(root, d) for d in sorted(dirs)]
    return [c for c in ckpts if storage.read_bytes(storage.join(c, STATE)) is not None]


def wipe(root: str) -> None:
    """Delete every checkpoint under ``root`` (a run that starts over)."""
    filesystem, path = storage.filesystem(f"{root}/{RUN_NAME}")
    filesystem.delete_dir_contents(path, missing_dir_ok=True)


def local_copy(ckpt_uri: str, dest: Path) -> Path:
    """A checkpoint as a local dir: local ones are read in place, s3 ones downloaded to ``dest``."""
    from pyarrow import fs as pafs

    path, filesystem = storage.ray_storage(ckpt_uri)
    if filesystem is None:
        return Path(ckpt_uri)
    pafs.copy_files(path, str(dest), source_filesystem=filesystem)
    return dest


def last_val_loss(history: list[dict]) -> float:
    return next((r["val_loss"] for r in reversed(history) if "val_loss" in r), float("inf"))


def best(ckpts: list[str], history: list[dict]) -> str:
    """The kept checkpoint with the lowest val_loss at its step (the newest when none was evaluated)."""
    val_at = {r["step"]: r["val_loss"] for r in history if "val_loss" in r}
    scored = [(val_at[step_of(c)], c) for c in ckpts if step_of(c) in val_at]
    return min(scored)[1] if scored else ckpts[-1]


def to_prune(ckpts: list[str], keep: int) -> list[str]:
    """Ray Train's policy, for bare runs: of ``ckpts`` (oldest first), keep the ``keep`` best by val_loss,
    and always the newest."""
    def val_loss(ckpt: str) -> float:
        state = storage.read_text(storage.join(ckpt, STATE))
        return last_val_loss(json.loads(state).get("history", []) if state else [])

    kept = set(sorted(ckpts, key=val_loss)[:keep]) | set(ckpts[-1:])
    return [c for c in ckpts if c not in kept]


def save_bare(tmp: Path, root: str, name: str, keep: int) -> None:
    """Without Ray: put the checkpoint in place under ``root`` (local, or s3:// uploaded with its
    ``state.json`` last), then prune as Ray Train does."""
    uploads.put_dir(tmp, f"{root}/{RUN_NAME}/{name}", last=STATE)
    for old in to_prune(list_checkpoints(root), keep):
        uploads.delete_dir(old)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_hf_dir(model, tokenizer_dir: str | Path, out: Path, state_dict: dict | None = None) -> None:
    """Model weights (safetensors) + config + tokenizer files as one HF dir (``state_dict``: the gathered
    weights of a sharded model)."""
    from transformers import AutoTokenizer

    model.save_pretrained(str(out), safe_serialization=True, state_dict=state_dict)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out))


def write(path: Path, model, optimizer, state, tokenizer_dir: str | Path,
          model_state: dict | None = None, optimizer_state: dict | None = None) -> None:
    """One checkpoint into ``path``; the ``*_state`` dicts stand in for a sharded model's own."""
    save_hf_dir(model, tokenizer_dir, path / "model", model_state)
    torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), path / "optimizer.pt")
    torch.save(rng_state(), path / "rng.pt")
    (path / "state.json").write_text(json.dumps(dataclasses.asdict(state)))


def read_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text())


def report_of(state: dict) -> dict:
    """What a training worker reports with a checkpoint (a sweep's scheduler reads it)."""
    history = state.get("history", [])
    return {"step": state["step"], "val_loss": last_val_loss(history),
            "loss": history[-1]["loss"] if history else None, "stopped_early": state.get("stopped_early", False)}
