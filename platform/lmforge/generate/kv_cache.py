"""The KV cache of one engine: preallocated slots that the graph updates in place, and prefix reuse.

One buffer per layer and kind, ``[slots, kv_heads, capacity, head_dim]``, allocated once: its size is
the memory bound the engine states at start, whatever the requests. A sequence owns one slot (a row) for
its life; the graph writes its new keys/values at its own length, so nothing is copied when sequences
join or leave, and no row is padded to another's length.

A slot keeps its tokens after its sequence ends. A new prompt that starts with tokens some free slot
still holds (the earlier turns of a chat, a shared system prompt) takes that slot and skips computing
them: only the rest of the prompt is prefilled. A slot also remembers which LoRA adapter computed it
(:mod:`lmforge.generate.adapters`): keys and values differ per adapter, so only the same one reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CacheStats:
    prompt_tokens: int = 0  # prompt tokens admitted
    reused_tokens: int = 0  # of which were already in a slot's cache (not computed)

    @property
    def hit_rate(self) -> float:
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class KVCache:
    """``slots`` rows of ``capacity`` positions for every layer's keys and values."""

    def __init__(self, names: list[str], slots: int, kv_heads: int, capacity: int, head_dim: int,
                 device: str = "cpu", dtype=np.float32):
        self.names, self.slots, self.capacity, self.device = names, slots, capacity, device
        self.dtype = np.dtype(dtype)  # the graph's: float32, or int8 (an export with `kv_cache: int8`)
        self.row_shape = (kv_heads, capacity, head_dim)
        self._row_bytes = kv_heads * capacity * head_dim * self.dtype.itemsize
        self.nbytes = len(names) * slots * self._row_bytes
        if device == "cpu":
            self.buffers = {n: np.zeros((slots, *self.row_shape), self.dtype) for n in names}
            self._base = {n: b.ctypes.data for n, b in self.buffers.items()}
        else:  # on the device: onnxruntime allocates it, and no step copies it to the host
            import onnxruntime as ort

            shape = (slots, *self.row_shape)
            self.buffers = {n: ort.OrtValue.ortvalue_from_shape_and_type(shape, self.dtype, device, 0) for n in names}
            self._base = {n: b.data_ptr() for n, b in self.buffers.items()}
        self.bindings: dict = {}  # (first slot, rows) -> the onnxruntime IOBinding of those rows (OnnxModel's)
        self.adapter_versions: dict = {}  # (first slot, rows) -> the adapter stack version bound there
        self.bound_stacks: dict = {}  # (first slot, rows) -> that stack, alive while bound
        self.tokens: list[list[int]] = [[] for _ in range(slots)]  # what each slot's cache holds, in order
        self.adapter = [0] * slots  # the adapter uid that computed each slot's cache (0: the base)
        self.busy = [False] * slots
        self.stats = CacheStats()

    def address(self, name: str, slot: int) -> int:
        """Where ``slot``'s row of buffer ``name`` starts: rows [slot, slot + n) are one contiguous tensor."""
        return self._base[name] + slot * self._row_bytes

    @staticmethod
    def bytes_per_token(n_buffers: int, kv_heads: int, head_dim: int, itemsize: int = 4) -> int:
        return n_buffers * kv_heads * head_dim * itemsize

    def free_slots(self) -> int:
        return self.busy.count(False)

    def acquire(self, prompt: list[int], reuse: bool = True, adapter: int = 0) -> tuple[int, int]:
        """A free slot for ``prompt`` (computed with ``adapter``) and how many of its first tokens that slot's
        cache already holds (at most all but the last: its logits are needed). Raises when every slot is busy.

        Without a shared prefix the lowest free slot is taken: a decode call spans the slots from the
        lowest running one to the highest, and every idle row inside costs a row of compute."""
        best, reused = -1, 0
        for slot in range(self.slots):
            if not self.busy[slot]:
                same = reuse and self.adapter[slot] == adapter
                n = _common_prefix(self.tokens[slot], prompt, len(prompt) - 1) if same else 0
                if best < 0 or n > reused:
                    best, reused = slot, n
        if best < 0:
            raise RuntimeError("no free KV cache slot")
        self.busy[best], self.adapter[best] = True, adapter
        del self.tokens[best][reused:]  # what follows the shared prefix is overwritten
        self.stats.prompt_tokens += len(prompt)
        self.stats.reused_tokens += reused
        return best, reused

    def longest_prefix(self, prompt: list[int], limit: int, skip: int = -1, adapter: int = 0) -> tuple[int, int]:
        """The slot (busy or free, but ``skip``) whose cache holds the longest start of ``prompt`` computed with
        ``adapter``, at most ``limit`` tokens of it, and that length: ``(-1, 0)`` when none shares a token."""
        best, n = -1, 0
        for slot in range(self.slots):
            if slot != skip and self.adapter[slot] == adapter:
                k = _common_prefix(self.tokens[slot], prompt, limit)
                if k > n:
                    best, n = slot, k
        return best, n

    def copy_prefix(self, source: KVCache, source_slot: int, slot: int, start: int, end: int) -> None:
        """Positions ``[start, end)`` of ``source_slot`` (of ``source``, this cache or another pool's) into
        ``slot``: a prefix another sequence computed is copied (tens of microseconds a token's layers)
        rather than computed again. The keys are stored rotated at their absolute positions, so the copy is
        exact at the same positions."""
        for name in self.names:
            self.buffers[name][slot, :, start:end] = source.buffers[name][source_slot, :, start:end]
        self.tokens[slot][start:] = source.tokens[source_slot][start:end]
        self.stats.reused_tokens += end - start

    def release(self, slot: int, keep: bool = True) -> None:
        """Free ``slot``; with ``keep`` its tokens stay for a later prompt that shares their prefix."""
        self.busy[slot] = False
        if not keep:
            self.tokens[slot] = []

    def clear(self) -> None:
        """Forget every slot (after a failed step, whose writes may be partial)."""
        self.busy = [False] * self.slots
        self.tokens = [[] for _ in range(self.slots)]


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    if n <= 0:
        return 0
    same = np.asarray(a[:n]) == np.asarray(b[:n])
    return n if same.all() else int(np.argmin(same))


def prefill_calls(plan: list[tuple]) -> list[list[tuple]]:
    """The engine's prefill (sequence, chunk) pairs (a sequence has ``pool`` and ``slot``) grouped into graph
    calls: neighbours in one pool's slots join while the call's padding (idle rows between them, shorter
    chunks padded to the longest) stays at most its real tokens, or it is small."""
    calls: list[list] = []
    for item in sorted(plan, key=lambda p: (id(p[0].pool), p[0].slot)):
        group = calls[-1] if calls and calls[-1][0][0].pool is item[0].pool else None
        if group is not None:
            rows = item[0].slot - group[0][0].slot + 1
            width = max(len(item[1]), *(len(c) for _, c in group))
            real = len(item[1]) + sum(len(c) for _, c in group)
            if rows * width <= max(2 * real, 64):
                group.append(item)
                continue
        calls.append([item])
    return calls


def cache_layout(max_positions: int, max_running: int, max_context: int | None, short_context: int,
                 long_slots: int) -> list[tuple[int, int]]:
    """The KV cache's pools as (slots, positions): ``max_running`` short slots, then ``long_slots`` of the
    full context (none when a short slot is the full context already)."""
    longest = min(max_context or max_positions, max_positions)
    short = min(short_context, longest)
    return [(max_running, short)] + ([(long_slots, longest)] if short < longest and long_slots > 0 else [])
