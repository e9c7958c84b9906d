"""LoRA adapters served beside their base: one copy of the base graph, many fine-tunes, mixed in a batch.

An export made with adapters (``lmforge export adapters=[...]``, :mod:`lmforge.export.lora_graph`) adds
to every adapted projection ``y = W x`` the term ``((x A) * mask) B``, where ``A`` ``[in, R]`` and ``B``
``[R, out]`` are graph *inputs*: every loaded adapter's ``A`` side by side (its own ``r`` columns), ``B``
stacked the same way with the adapter's ``alpha / r`` folded in, and ``mask`` ``[rows, R]`` a row's ones
over its adapter's columns (none for the base). So a batch mixes adapters freely and the extra work per
projection is two matmuls ``R`` wide (R: the loaded adapters' ranks summed).

:class:`AdapterSet` holds those stacks, swapped whole on every load or unload (a reader always sees one
consistent set) and read by :class:`~lmforge.generate.onnx_model.OnnxModel` per call. Adapters are
``peft`` LoRA dirs (``adapter_config.json`` + ``adapter_model.safetensors``), e.g. ``lmforge finetune``'s
``adapter/``. An adapter is known by a name to requests and by a number (``uid``, never reused) to the
engine, so a KV cache computed with one adapter is never reused for another, even under the same name.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MASK = "lora_mask"
_PEFT_PREFIX = "base_model.model."


def input_names(target: str) -> tuple[str, str]:
    """The graph inputs of one adapted module (its path in the HF model, e.g. ``model.layers.0.self_attn.q_proj``)."""
    return f"lora.{target}.A", f"lora.{target}.B"


def adapter_name(entry: str) -> tuple[str, str]:
    """``name=path`` or a path: a finetune's ``runs/x/adapter`` is named ``x``, any other dir by its name."""
    if "=" in entry and not entry.startswith(("s3://", "/")) and "/" not in entry.split("=", 1)[0]:
        name, path = entry.split("=", 1)
        return name, path
    path = Path(entry.rstrip("/"))
    return (path.parent.name if path.name == "adapter" and path.parent.name else path.name), entry


class AdapterError(ValueError):
    """An adapter that cannot be served by this graph (what it adapts, its kind, its shapes)."""


class AdapterNotFound(KeyError):
    """A request named an adapter that is not loaded."""

    def __str__(self) -> str:
        return str(self.args[0])


def read_adapter(path: str | Path, targets: dict[str, tuple[int, int]]) -> tuple[int, dict[str, tuple]]:
    """A peft LoRA dir -> (rank, {target: (A [in, r], B [r, out] with alpha/r folded in)}), checked against
    the graph's ``targets`` ({module path: (in, out)}): a module the graph has no inputs for, a shape that
    is not the base's, or a LoRA variant the graph does not compute is an :class:`AdapterError`."""
    from safetensors.numpy import load_file

    path = Path(path)
    config_file, weights_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise AdapterError(f"{path} is not a LoRA adapter dir (adapter_config.json + adapter_model.safetensors)")
    config = json.loads(config_file.read_text())
    unsupported = {"peft_type": config.get("peft_type", "LORA") != "LORA", "use_dora": config.get("use_dora"),
                   "modules_to_save": config.get("modules_to_save"), "rank_pattern": config.get("rank_pattern"),
                   "alpha_pattern": config.get("alpha_pattern")}
    if bad := [k for k, v in unsupported.items() if v]:
        raise AdapterError(f"adapter {path}: {', '.join(bad)} not supported (plain LoRA on linear layers only)")
    r = int(config["r"])
    scale = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
    tensors = load_file(str(weights_file))
    weights = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        target = key.split(".lora_A.")[0].removeprefix(_PEFT_PREFIX)
        if target not in targets:
            raise AdapterError(f"adapter {path} adapts {target}, which this export has no LoRA inputs for "
                               f"(export with lora_targets covering it; it has {_kinds(targets)})")
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        if a.shape != (r, targets[target][0]) or b.shape != (targets[target][1], r):
            raise AdapterError(f"adapter {path}: {target} has A {a.shape}, B {b.shape}; this base's module is "
                               f"{targets[target][0]} -> {targets[target][1]} at rank {r} (another base model?)")
        weights[target] = (np.ascontiguousarray(a.T, np.float32), np.ascontiguousarray(b.T * scale, np.float32))
    if not weights:
        raise AdapterError(f"adapter {path} has no LoRA weights")
    return r, weights


def _kinds(targets) -> str:
    return ", ".join(sorted({t.rsplit(".", 1)[-1] for t in targets}))


@dataclass(frozen=True)
class Stack:
    """One consistent set of loaded adapters: each uid's columns and the graph's inputs for them."""

    version: int
    columns: dict[int, tuple[int, int]]  # uid -> (first column, rank)
    inputs: dict[str, np.ndarray]  # graph input name -> A [in, R] or B [R, out]
    width: int  # R

    def mask(self, uids) -> np.ndarray:
        """``[rows, R]``: each row's ones over its adapter's columns (uid 0, the base: none)."""
        mask = np.zeros((len(uids), self.width), np.float32)
        for row, uid in enumerate(uids):
            if uid:
                start, r = self.columns[uid]
                mask[row, start: start + r] = 1.0
        return mask


@dataclass
class AdapterSet:
    """The adapters loaded into one model, by name; thread-safe (loads come from a server's event loop,
    reads from the engine's thread)."""

    targets: dict[str, tuple[int, int]]  # module path -> (in, out), from the graph's inputs
    names: dict[str, int] = field(default_factory=dict)  # loaded name -> uid
    sources: dict[str, str] = field(default_factory=dict)  # loaded name -> the dir it came from
    retired: set[int] = field(default_factory=set)  # unloaded, kept while a sequence still uses them

    def __post_init__(self):
        self._lock = threading.Lock()
        self._next_uid = 1
        self.stack = Stack(0, {}, self._empty(), 1)

    def _empty(self) -> dict[str, np.ndarray]:
        """No adapter: one zero column (a zero-width input is not every kernel's case)."""
        out = {}
        for target, (n_in, n_out) in self.targets.items():
            a, b = input_names(target)
            out[a], out[b] = np.zeros((n_in, 1), np.float32), np.zeros((1, n_out), np.float32)
        return out

    def load(self, name: str, path: str | Path) -> int:
        """Read and add an adapter under ``name`` (replacing one of that name); returns its uid."""
        r, weights = read_adapter(path, self.targets)
        with self._lock:
            uid, self._next_uid = self._next_uid, self._next_uid + 1
            old = self.names.pop(name, None)
            if old is not None:
                self.retired.add(old)
            stack, start = self.stack, sum(r for _, r in self.stack.columns.values())
            inputs = {}
            for target, (n_in, n_out) in self.targets.items():
                a_name, b_name = input_names(target)
                a, b = weights.get(target, (np.zeros((n_in, r), np.float32), np.zeros((r, n_out), np.float32)))
                keep = stack.width if stack.columns else 0  # the dummy column goes once there is an adapter
                inputs[a_name] = np.concatenate([stack.inputs[a_name][:, :keep], a], axis=1)
                inputs[b_name] = np.concatenate([stack.inputs[b_name][:keep], b], axis=0)
            self.stack = Stack(stack.version + 1, {**stack.columns, uid: (start, r)}, inputs, start + r)
            self.names[name], self.sources[name] = uid, str(path)
        return uid

    def unload(self, name: str) -> None:
        """New requests can no longer name it; its weights go once no sequence uses them (:meth:`collect`)."""
        with self._lock:
            if name not in self.names:
                raise AdapterNotFound(f"adapter `{name}` is not loaded")
            self.retired.add(self.names.pop(name))
            self.sources.pop(name)

    def uid(self, name: str) -> int:
        if name not in self.names:
            loaded = ", ".join(sorted(self.names)) or "none"
            raise AdapterNotFound(f"adapter `{name}` is not loaded (loaded: {loaded})")
        return self.names[name]

    def collect(self, in_use: set[int]) -> None:
        """Drop the retired adapters no sequence uses any more: their columns leave the stacks."""
        with self._lock:
            gone = {uid for uid in self.retired if uid not in in_use and uid in self.stack.columns}
            self.retired -= {uid for uid in self.retired if uid not in in_use}
            if not gone:
                return
            stack = self.stack
            kept = [(uid, c) for uid, c in sorted(stack.columns.items(), key=lambda x: x[1][0]) if uid not in gone]
            if not kept:
                self.stack = Stack(stack.version + 1, {}, self._empty(), 1)
                return
            cols = np.concatenate([np.arange(s, s + r) for _, (s, r) in kept])
            inputs = {n: (v[:, cols] if n.endswith(".A") else v[cols]) for n, v in stack.inputs.items()}
            columns, start = {}, 0
            for uid, (_, r) in kept:
                columns[uid], start = (start, r), start + r
            self.stack = Stack(stack.version + 1, columns, inputs, start)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.stack.inputs.values())
