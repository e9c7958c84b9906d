"""An ``lmforge export`` dir loaded for generation: the onnxruntime session, tokenizer and model facts.

The graph (:mod:`lmforge.export.graph`) reads and writes a KV cache the caller owns. :meth:`OnnxModel.run`
is one call of it over a contiguous range of a :class:`~lmforge.generate.kv_cache.KVCache`'s slots,
bound with onnxruntime's IOBinding to the cache's own memory: past and present are one buffer, so no
cache crosses into numpy or is copied. :meth:`OnnxModel.logits` scores whole sequences in one call (export
verification, evaluation). The engine (:mod:`lmforge.generate.engine`) decides what to feed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmforge.generate import adapters
from lmforge.generate.adapters import AdapterSet
from lmforge.generate.kv_cache import KVCache

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
GRAPH_INPUTS = ("input_ids", "query_seqlens", "seqlens_k", "total_sequence_length", "logits_index")
_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(int8)": np.int8}  # of the KV cache


def context_length(hf_config: dict) -> int:
    """The positions a model's HF ``config.json`` allows (GPT-2 names them ``n_positions``)."""
    return int(hf_config.get("max_position_embeddings") or hf_config.get("n_positions") or 2048)


def lora_targets(inputs: dict) -> dict[str, tuple[int, int]]:
    """{module path: (in, out)} of a graph's LoRA inputs (``lora.<path>.A`` ``[in, R]``, ``.B`` ``[R, out]``)."""
    targets = {}
    for name, arg in inputs.items():
        if name.startswith("lora.") and name.endswith(".A"):
            target = name[len("lora."): -len(".A")]
            targets[target] = (arg.shape[0], inputs[adapters.input_names(target)[1]].shape[1])
    return targets


class OnnxModel:
    """``model.onnx`` (KV cache in place) + tokenizer from an export dir."""

    def __init__(self, model_dir: str | Path, intra_op_threads: int = 0, model_file: str = "model.onnx",
                 device: str = "cpu", spin: bool = True):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.model_dir, self.device = Path(model_dir), device
        if not (self.model_dir / model_file).is_file():
            raise FileNotFoundError(f"{model_dir} has no {model_file}: run `lmforge export` first")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads  # 0 lets onnxruntime pick
        if not spin:  # idle threads sleep instead of spinning: a server shares its cores with the serving stack
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.model_dir / model_file), opts, providers=PROVIDERS[device])
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "query_seqlens" not in inputs:
            raise ValueError(f"{model_dir / model_file} is an export from before the in-place KV cache: "
                             "export the model again (`lmforge export`)")
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        _, self.kv_heads, _, self.head_dim = inputs[self.past_names[0]].shape
        self.kv_dtype = np.dtype(_ONNX_TYPES[inputs[self.past_names[0]].type])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        hf_config = json.loads((self.model_dir / "config.json").read_text())
        self.max_positions = context_length(hf_config)
        eos = hf_config.get("eos_token_id", self.tokenizer.eos_token_id)
        self.eos_ids = sorted(set(eos if isinstance(eos, list) else [eos]) - {None})
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.hidden_size = outputs["hidden_states"].shape[-1] if "hidden_states" in outputs else None
        self.vocab_size = self.session.get_outputs()[0].shape[-1]
        if not isinstance(self.vocab_size, int):
            self.vocab_size = int(hf_config.get("vocab_size") or len(self.tokenizer))
        # an export with LoRA inputs serves adapters beside the base (lmforge.generate.adapters)
        self.adapters = AdapterSet(lora_targets(inputs)) if adapters.MASK in inputs else None

    @property
    def bytes_per_token(self) -> int:
        """KV cache bytes one token takes (every layer's key and value)."""
        return KVCache.bytes_per_token(len(self.past_names), self.kv_heads, self.head_dim, self.kv_dtype.itemsize)

    def new_cache(self, slots: int, capacity: int) -> KVCache:
        return KVCache(self.past_names, slots, self.kv_heads, min(capacity, self.max_positions), self.head_dim,
                       self.device, self.kv_dtype)

    def run(self, cache: KVCache, first_slot: int, input_ids: np.ndarray, query_seqlens: np.ndarray,
            seqlens_k: np.ndarray, logits_index: np.ndarray, hidden: np.ndarray | None = None,
            adapter_uids: list[int] | None = None) -> np.ndarray:
        """One graph call over slots ``[first_slot, first_slot + len(input_ids))``: each row's
        ``query_seqlens`` tokens (of ``input_ids``, right-padded) join its cache, which then holds
        ``seqlens_k + 1`` tokens; returns the logits at ``logits_index`` ``[rows, K, vocab]``. With
        adapters, ``adapter_uids`` says each row's (0 or None: the base)."""
        rows = input_ids.shape[0]
        io = self._binding(cache, first_slot, rows)
        if self.adapters is not None:
            self._bind_adapters(io, cache, (first_slot, rows), adapter_uids or [0] * rows)
        feeds = (input_ids.astype(np.int64, copy=False), query_seqlens.astype(np.int32, copy=False),
                 seqlens_k.astype(np.int32, copy=False), np.array(cache.capacity, np.int32),
                 logits_index.astype(np.int64, copy=False))
        for name, value in zip(GRAPH_INPUTS, feeds):
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        logits = np.empty((rows, logits_index.shape[1], self.vocab_size), np.float32)
        io.bind_output("logits", "cpu", 0, np.float32, logits.shape, logits.ctypes.data)
        if hidden is not None:  # [rows, S, hidden]: every new position's final hidden state, for embeddings
            io.bind_output("hidden_states", "cpu", 0, np.float32, hidden.shape, hidden.ctypes.data)
        self.session.run_with_iobinding(io)
        return logits

    def _binding(self, cache: KVCache, first_slot: int, rows: int):
        """The IOBinding of a slot range, kept: its cache rows are bound as past and present (one memory,
        so the graph updates them in place) once, not at every step."""
        key = (first_slot, rows)
        io = cache.bindings.get(key)  # kept with the cache: a binding must not outlive the memory it names
        if io is None:
            io = self.session.io_binding()
            shape = (rows, *cache.row_shape)
            for past, present in zip(self.past_names, self.present_names):
                address = cache.address(past, first_slot)
                io.bind_input(past, cache.device, 0, cache.dtype, shape, address)
                io.bind_output(present, cache.device, 0, cache.dtype, shape, address)
            cache.bindings[key] = io
        return io

    def _bind_adapters(self, io, cache: KVCache, key: tuple[int, int], uids: list[int]) -> None:
        """The rows' adapter mask, every call; the adapters' stacked weights only when they changed since
        this binding last had them (bound by address: the stack's arrays live as long as it does, and a
        new stack is bound before the next call)."""
        stack = self.adapters.stack
        if cache.adapter_versions.get(key) != stack.version:
            for name, value in stack.inputs.items():
                io.bind_input(name, "cpu", 0, np.float32, value.shape, value.ctypes.data)
            cache.adapter_versions[key] = stack.version
            cache.bound_stacks[key] = stack  # keeps the bound arrays alive while the binding names them
        io.bind_cpu_input(adapters.MASK, stack.mask(uids))

    def run_rows(self, cache: KVCache, rows: list[tuple[int, list[int], int, int]],
                 hidden: np.ndarray | None = None, adapter_of: dict[int, int] | None = None) -> dict[int, np.ndarray]:
        """One graph call for ``(slot, new tokens, tokens already cached, logits wanted)`` rows: the call
        spans the lowest to the highest slot, the slots between idle (no new tokens, cache untouched), the
        new tokens right-padded to the longest; returns each slot's logits at its last ``wanted`` new
        tokens, ``[wanted, vocab]`` (and fills ``hidden`` ``[slots spanned, longest, hidden]`` when given);
        ``adapter_of``: slot -> adapter uid for the rows that use one."""
        first = min(slot for slot, *_ in rows)
        n = max(slot for slot, *_ in rows) - first + 1
        width, keep = max(len(t) for _, t, _, _ in rows), max(k for *_, k in rows)
        ids, index = np.full((n, width), self.pad_id, np.int64), np.zeros((n, keep), np.int64)
        query, total = np.zeros(n, np.int32), np.ones(n, np.int32)  # an idle row: 0 new tokens of 1 cached
        for slot, tokens, cached, wanted in rows:
            i = slot - first
            ids[i, : len(tokens)], query[i], total[i] = tokens, len(tokens), cached + len(tokens)
            index[i, :wanted] = np.arange(len(tokens) - wanted, len(tokens))
            index[i, wanted:] = len(tokens) - 1
        uids = [adapter_of.get(first + i, 0) for i in range(n)] if adapter_of else None
        logits = self.run(cache, first, ids, query, total - 1, index, hidden, uids)
        return {slot: logits[slot - first, :wanted] for slot, _, _, wanted in rows}

    def logits(self, seqs: list[list[int]], starts: list[int] | None = None,
               adapter: str | None = None) -> list[np.ndarray]:
        """Each sequence's logits at positions ``[start, len)`` (default all), ``[len - start, vocab]``; all
        sequences in one call, right-padded, over a cache of their own; with a loaded ``adapter``'s weights."""
        starts = starts or [0] * len(seqs)
        cache = self.new_cache(len(seqs), max(len(s) for s in seqs))
        uid = self.adapters.uid(adapter) if adapter is not None else 0
        out = self.run_rows(cache, [(i, s, 0, len(s) - b) for i, (s, b) in enumerate(zip(seqs, starts))],
                            adapter_of={i: uid for i in range(len(seqs))} if uid else None)
        return [out[i] for i in range(len(seqs))]

    def embed(self, seqs: list[list[int]], max_tokens_per_call: int = 2048, adapter: str | None = None) -> np.ndarray:
        """Each sequence's embedding ``[len(seqs), hidden]``: the final hidden states (after the last norm)
        averaged over its tokens, then L2-normalised; sequences batched into calls of at most
        ``max_tokens_per_call`` padded positions (each call's KV cache is its own, then dropped); with a
        loaded ``adapter``'s weights."""
        if self.hidden_size is None:
            raise ValueError(f"{self.model_dir} is an export without hidden states: export it again to embed")
        uid = self.adapters.uid(adapter) if adapter is not None else 0
        out = np.zeros((len(seqs), self.hidden_size), np.float32)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths share a call
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * len(seqs[order[end]]) <= max_tokens_per_call:
                end += 1
            group = [seqs[i] for i in order[start:end]]
            width = max(len(s) for s in group)
            hidden = np.empty((len(group), width, self.hidden_size), np.float32)
            self.run_rows(self.new_cache(len(group), width), [(row, s, 0, 1) for row, s in enumerate(group)], hidden,
                          {row: uid for row in range(len(group))} if uid else None)
            for row, i in enumerate(order[start:end]):
                out[i] = hidden[row, : len(seqs[i])].mean(axis=0)
            start = end
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
