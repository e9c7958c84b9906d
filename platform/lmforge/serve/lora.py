"""The LoRA adapters one replica serves beside its model, and what a request's ``model`` names.

A request picks an adapter with ``model: "<model>:<adapter>"`` (or the adapter's own name, when no model
is called that). The adapters are those exported beside the model (``<export>/adapters/<name>/``, loaded
at start and kept), and, with ``serve.lora_root``, any adapter dir under that root: loaded the first
time a request or ``POST /v1/load_lora_adapter`` (vLLM's endpoint) names it, so every replica of a model
can serve the same adapters without being told one by one, at most ``serve.max_loaded_adapters`` of them
at once (the least recently used idle one makes room). ``POST /v1/unload_lora_adapter`` drops one;
requests already running with it finish with it. Loading is off without ``lora_root``: a client never
makes the server read a path the operator did not open. The maths: :mod:`lmforge.generate.adapters`.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from lmforge import storage
from lmforge.generate.adapters import AdapterError, AdapterNotFound
from lmforge.generate.onnx_model import OnnxModel
from lmforge.serve.openai_api import RequestError

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def not_found(e: AdapterNotFound) -> RequestError:
    return RequestError(str(e), "model", status=404, code="model_not_found")


class ServedAdapters:
    def __init__(self, model_name: str, model: OnnxModel, model_dir: str, lora_root: str | None,
                 max_loaded: int):
        self.model_name, self.model, self.lora_root, self.max_loaded = model_name, model, lora_root, max_loaded
        self.pinned: set[str] = set()  # exported beside the model: never evicted
        self.last_used: dict[str, float] = {}
        self._lock = asyncio.Lock()
        bundled = Path(model_dir) / "adapters"
        if bundled.is_dir() and model.adapters is not None:
            for d in sorted(p for p in bundled.iterdir() if p.is_dir()):
                model.adapters.load(d.name, d)
                self.pinned.add(d.name)

    @property
    def enabled(self) -> bool:
        return self.model.adapters is not None

    def loaded(self) -> dict[str, str]:
        """name -> the dir it was loaded from."""
        return dict(self.model.adapters.sources) if self.enabled else {}

    def requested(self, model: str | None) -> str | None:
        """The adapter a request's ``model`` names (None: the model itself)."""
        if model is None or model == self.model_name:
            return None
        return model.removeprefix(f"{self.model_name}:")

    def serves(self, model: str) -> bool:
        """Whether ``model`` is this replica's model or could be one of its adapters (not yet checked)."""
        return model == self.model_name or model.startswith(f"{self.model_name}:") or model in self.loaded()

    async def ready(self, name: str | None) -> None:
        """Make sure adapter ``name`` is loaded (from ``lora_root`` if it is not); 404 when it cannot be."""
        if name is None:
            return
        if name in self.loaded():
            self.last_used[name] = time.monotonic()
            return
        if not self.enabled or self.lora_root is None or not _NAME.match(name):
            raise not_found(AdapterNotFound(self._unknown(name)))
        path = f"{self.lora_root.rstrip('/')}/{name}"
        try:
            await self.load(name, path)
        except (AdapterError, FileNotFoundError) as e:
            raise not_found(AdapterNotFound(f"{self._unknown(name)}; {e}")) from None

    def _unknown(self, name: str) -> str:
        have = ", ".join(f"{self.model_name}:{n}" for n in sorted(self.loaded())) or "no adapters loaded"
        return f"The model `{self.model_name}:{name}` does not exist ({have})"

    async def load(self, name: str, path: str | None = None) -> str:
        """Load ``name`` from ``path`` (default ``<lora_root>/<name>``), which must be under ``lora_root``."""
        if not self.enabled:
            raise RequestError(f"model {self.model_name} takes no LoRA adapters: export it with adapters=[...] "
                               "or lora_targets=[...]", "lora_name")
        if self.lora_root is None:
            raise RequestError("loading adapters at run time is off: set serve.lora_root to the dir they are "
                               "loaded from", "lora_path")
        if not _NAME.match(name):
            raise RequestError(f"lora_name: {name!r} must be letters, digits, '_', '.' or '-'", "lora_name")
        path = path or f"{self.lora_root.rstrip('/')}/{name}"
        if not _under(path, self.lora_root):
            raise RequestError(f"lora_path: {path} is not under serve.lora_root ({self.lora_root})", "lora_path")
        async with self._lock:
            local = await asyncio.to_thread(storage.local_dir, path)
            await asyncio.to_thread(self.model.adapters.load, name, local)
            self.last_used[name] = time.monotonic()
            self._evict()
        return name

    def unload(self, name: str) -> None:
        if name not in self.loaded():
            raise not_found(AdapterNotFound(f"adapter `{name}` is not loaded"))
        self.model.adapters.unload(name)
        self.pinned.discard(name)
        self.last_used.pop(name, None)

    def _evict(self) -> None:
        """Past ``max_loaded`` adapters from ``lora_root``, unload the least recently used (requests still
        running with it finish with it: its weights stay until then)."""
        dynamic = [n for n in self.loaded() if n not in self.pinned]
        for name in sorted(dynamic, key=lambda n: self.last_used.get(n, 0))[: max(0, len(dynamic) - self.max_loaded)]:
            self.unload(name)

    def listed(self) -> dict[str, dict]:
        """/v1/models entries for the loaded adapters: ``<model>:<adapter>``, with their parent and source."""
        return {f"{self.model_name}:{n}": {"parent": self.model_name, "root": src}
                for n, src in sorted(self.loaded().items())}


def _under(path: str, root: str) -> bool:
    if path.startswith("s3://") or root.startswith("s3://"):
        return path.rstrip("/").startswith(root.rstrip("/") + "/") and ".." not in path.split("/")
    return Path(path).resolve().is_relative_to(Path(root).resolve()) and Path(path).resolve() != Path(root).resolve()
