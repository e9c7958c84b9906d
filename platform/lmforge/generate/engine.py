"""Continuous batching over an ONNX model whose KV cache lives in preallocated slots, updated in place.

Every :meth:`Engine.step`:

1. admits waiting requests into free slots (a prompt whose start a free slot still holds reuses it;
   one whose start a busy slot has computed copies it there when its prefill begins);
2. decodes one token for every running sequence: one graph call per cache pool, each row attending
   over its own length, idle rows costing one padding token;
3. prefills at most ``max_prefill_tokens`` prompt tokens, in chunks, so a long prompt delays the
   running streams by a chunk per step rather than by its whole length; logits only for the last
   position (every position when the request asks for prompt logprobs);
4. retires sequences that finished (end of sequence, ``max_tokens``, a stop string, the context, an
   abort), whose slots free at once with nothing copied.

Memory is fixed at start (:attr:`Engine.cache_bytes`): ``max_running`` slots of ``short_context``
positions, and ``long_slots`` more of the full ``max_context`` for the requests that need them, so one
long prompt does not make every slot long. Each request has its own sampling parameters and random
generator, so a seeded request gives the same tokens whatever else is running. No Ray, no threads:
:mod:`lmforge.generate.async_engine` drives it from a server.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

import numpy as np

from lmforge.generate.adapters import AdapterNotFound
from lmforge.generate.choice import choose, grammar_complete
from lmforge.generate.constraints import Grammars
from lmforge.generate.kv_cache import KVCache, cache_layout, prefill_calls
from lmforge.generate.onnx_model import OnnxModel
from lmforge.generate.requests import ContextLengthError, EngineFullError, Output, SamplingParams
from lmforge.generate.sampling import token_logprob
from lmforge.generate.text import TextStream

log = logging.getLogger(__name__)

_MIN_COPY = 16  # prompt tokens worth copying from another slot (a common BOS token alone is not)


@dataclass
class _Seq:
    id: str
    prompt: list[int]
    params: SamplingParams
    rng: np.random.Generator
    text: TextStream
    generated: list[int] = field(default_factory=list)
    finish: str | None = None
    pool: KVCache | None = None
    slot: int = -1
    computed: int = 0  # prompt tokens in the cache (prefill progress)
    scored: list | None = None  # prompt logprobs gathered over the prefill's chunks
    matcher: object | None = None  # the constraint's llguidance matcher, fed every chosen token
    adapter: int = 0  # the LoRA adapter's uid (lmforge.generate.adapters); 0: the base

    @property
    def length(self) -> int:
        """Tokens in the cache once the last sampled token is fed."""
        return len(self.prompt) + len(self.generated)


class Engine:
    """One model, many concurrent requests. ``add`` and ``abort`` queue work; ``step`` does it."""

    def __init__(self, model: OnnxModel, max_running: int = 16, max_prefill_tokens: int = 512,
                 max_context: int | None = None, short_context: int = 1024, long_slots: int = 1,
                 max_waiting: int | None = None):
        """``max_running`` sequences of up to ``short_context`` tokens decode together (KV cache slots),
        beside ``long_slots`` more of up to ``max_context`` (default: the model's limit);
        ``max_prefill_tokens`` prompt tokens are computed per step; ``max_waiting`` sequences may queue
        beyond the free slots (default 16 x ``max_running``), more are refused (:class:`EngineFullError`)."""
        self.model = model
        self.max_context = min(max_context or model.max_positions, model.max_positions)
        self.max_prefill_tokens = max_prefill_tokens
        layout = cache_layout(model.max_positions, max_running, max_context, short_context, long_slots)
        self.pools = [model.new_cache(slots, positions) for slots, positions in layout]
        self.max_context = max(p.capacity for p in self.pools)  # without long slots, a short one's
        self.max_waiting = max_waiting if max_waiting is not None else 16 * max_running
        self.waiting: collections.deque[_Seq] = collections.deque()
        self.prefilling: list[_Seq] = []
        self.running: list[_Seq] = []
        self._aborted: set[str] = set()
        self._grammars: Grammars | None = None

    @property
    def grammars(self) -> Grammars:
        """The model's structured-output grammars, made at the first request that has a constraint."""
        if self._grammars is None:
            self._grammars = Grammars(self.model.tokenizer, self.model.vocab_size, self.model.eos_ids)
        return self._grammars

    @property
    def cache_bytes(self) -> int:
        """The KV cache's memory, all of it allocated at start."""
        return sum(p.nbytes for p in self.pools)

    def describe(self) -> str:
        pools = " + ".join(f"{p.slots} x {p.capacity}" for p in self.pools)
        return f"KV cache: {pools} positions = {self.cache_bytes / 2**30:.2f} GiB"

    # ------------------------------------------------------------------ requests
    def check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise :class:`ContextLengthError` when the prompt and ``max_tokens`` do not fit the context,
        :class:`~lmforge.generate.constraints.ConstraintError` when the constraint does not compile."""
        if params.constraint is not None:
            self.grammars.compiled(params.constraint)  # compiled (and kept) now: a bad one is the caller's error
        if not prompt_ids:
            raise ContextLengthError("the prompt has no tokens")
        needed = len(prompt_ids) + params.max_tokens
        if needed > self.max_context:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_context} tokens. However, you "
                f"requested {needed} tokens ({len(prompt_ids)} in the prompt, {params.max_tokens} in the completion).")

    def adapter_uid(self, name: str | None) -> int:
        """A loaded adapter's uid (0 for None: the base); ``AdapterNotFound`` otherwise."""
        if name is None:
            return 0
        if self.model.adapters is None:
            raise AdapterNotFound(f"adapter `{name}`: this model's export takes no LoRA adapters "
                                  "(export it with adapters=[...] or lora_targets=[...])")
        return self.model.adapters.uid(name)

    @property
    def capacity(self) -> int:
        """Sequences the engine can ever hold at once: its slots and its queue."""
        return self.max_waiting + sum(p.slots for p in self.pools)

    def room(self) -> int:
        """Sequences that can still be queued (whatever their size)."""
        return self.max_waiting + sum(p.free_slots() for p in self.pools) - len(self.waiting)

    def add(self, request_id: str, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None) -> None:
        """Queue a request (see :meth:`check`), with a loaded LoRA ``adapter`` or the base;
        :class:`EngineFullError` when the queue is full, ``AdapterNotFound`` for an adapter not loaded."""
        self.check(prompt_ids, params)
        uid = self.adapter_uid(adapter)
        if self.room() < 1:
            raise EngineFullError(f"{len(self.waiting)} sequences are waiting already")
        seed = None if params.seed is None else params.seed % 2**64  # any integer seeds (OpenAI allows negatives)
        stream = TextStream(self.model.tokenizer, params.stop)
        matcher = self.grammars.matcher(params.constraint) if params.constraint is not None else None
        self.waiting.append(_Seq(request_id, list(prompt_ids), params, np.random.default_rng(seed), stream,
                                 matcher=matcher, adapter=uid))

    def reset(self) -> list[str]:
        """Drop every request (after a failed step); returns their ids."""
        ids = [s.id for s in [*self.running, *self.prefilling, *self.waiting]]
        self.running, self.prefilling, self.waiting, self._aborted = [], [], collections.deque(), set()
        for pool in self.pools:
            pool.clear()
        return ids

    def abort(self, request_id: str) -> None:
        """Stop a request (its client went away); its slot is freed at the next step."""
        self._aborted.add(request_id)

    def has_work(self) -> bool:
        return bool(self.running or self.prefilling or self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running) + len(self.prefilling)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def prefix_hit_rate(self) -> float:
        """Share of admitted prompt tokens found in a slot's cache instead of computed."""
        prompt = sum(p.stats.prompt_tokens for p in self.pools)
        return sum(p.stats.reused_tokens for p in self.pools) / prompt if prompt else 0.0

    # ------------------------------------------------------------------ one step
    def step(self) -> list[Output]:
        """Admit, decode one token for every running sequence, prefill a chunk, retire the finished."""
        outputs = self._drop_aborted()
        self._admit()
        for pool in self.pools:
            rows = [s for s in self.running if s.pool is pool]
            if rows:
                outputs += self._decode(pool, rows)
        outputs += self._prefill()
        self._retire()
        return outputs

    def _admit(self) -> None:
        """Waiting requests into free slots of their pool, in arrival order; a request whose pool is full
        waits without holding up those behind it that fit another pool (a long request waits for a long
        slot, short ones never take it: no request can be starved by requests of the other size)."""
        blocked: set[int] = set()
        for s in list(self.waiting):
            if len(blocked) == len(self.pools):
                return
            pool = self._pool_for(s)
            if id(pool) in blocked:
                continue
            if not pool.free_slots():
                blocked.add(id(pool))
                continue
            self.waiting.remove(s)
            # the prompt's logprobs need logits at every position: no reuse for them
            s.slot, s.computed = pool.acquire(s.prompt, reuse=not s.params.prompt_logprobs, adapter=s.adapter)
            s.pool = pool
            s.scored = [None] if s.params.prompt_logprobs else None
            self.prefilling.append(s)

    def _pool_for(self, s: _Seq) -> KVCache:
        """The pool of the shortest slots the request fits (:meth:`check` made sure one does)."""
        need = len(s.prompt) + s.params.max_tokens
        return next(p for p in sorted(self.pools, key=lambda p: p.capacity) if p.capacity >= need)

    def _decode(self, pool: KVCache, rows: list[_Seq]) -> list[Output]:
        """One graph call: each running row's last token joins its cache; the next token is chosen."""
        out = self.model.run_rows(pool, [(s.slot, s.generated[-1:], s.length - 1, 1) for s in rows],
                                  adapter_of=_adapters(rows))
        for s in rows:
            pool.tokens[s.slot].append(s.generated[-1])
        picks = self._choose(np.stack([out[s.slot][0] for s in rows]), rows)
        return [self._advance(s, row, token) for s, row, token in picks]

    def _prefill(self) -> list[Output]:
        """Up to ``max_prefill_tokens`` prompt tokens, in arrival order (a chunk of a long prompt at a time);
        the chunks of neighbouring slots share a graph call where padding them to one length wastes little."""
        plan, budget = [], self.max_prefill_tokens
        for s in self.prefilling:
            if budget <= 0:
                break
            self._borrow(s)
            chunk = s.prompt[s.computed: s.computed + budget]
            budget -= len(chunk)
            plan.append((s, chunk))
        outputs = []
        for group in prefill_calls(plan):
            outputs += self._prefill_call(group)
        return outputs

    def _borrow(self, s: _Seq) -> None:
        """Copy the longest start of ``s``'s prompt that any slot has computed, busy or free, when it is more
        than ``s`` has: concurrent requests sharing a system prompt or a document compute it once. (Admission
        reuses a free slot's prefix in place; this also reaches running sequences' slots.) Not for prompt
        logprobs, which need every position's logits, nor on a device, whose buffers numpy cannot slice."""
        if s.scored is not None or s.pool.device != "cpu":
            return
        source, slot, n = None, -1, s.computed
        for pool in self.pools:
            found, k = pool.longest_prefix(s.prompt, len(s.prompt) - 1, skip=s.slot if pool is s.pool else -1,
                                           adapter=s.adapter)
            if k > n:
                source, slot, n = pool, found, k
        if n - s.computed >= _MIN_COPY:
            s.pool.copy_prefix(source, slot, s.slot, s.computed, n)
            s.computed = n

    def _prefill_call(self, group: list[tuple[_Seq, list[int]]]) -> list[Output]:
        """One graph call for neighbouring slots' chunks; logits at every chunk position only for the rows
        that score their prompt, else at the last."""
        wanted = [len(c) if s.scored is not None else 1 for s, c in group]
        out = self.model.run_rows(group[0][0].pool, [(s.slot, c, s.computed, k) for (s, c), k in zip(group, wanted)],
                                  adapter_of=_adapters([s for s, _ in group]))
        return [o for s, chunk in group for o in self._prefilled(s, chunk, out[s.slot])]

    def _prefilled(self, s: _Seq, chunk: list[int], logits: np.ndarray) -> list[Output]:
        """Book a prefilled chunk; at the prompt's end, choose the first token (or finish, for max_tokens 0)."""
        s.pool.tokens[s.slot].extend(chunk)
        if s.scored is not None:  # logits at prompt position j score token j + 1
            s.scored += [token_logprob(logits[j], s.prompt[s.computed + j + 1], s.params.logprobs or 0)
                         for j in range(len(chunk)) if s.computed + j + 1 < len(s.prompt)]
        s.computed += len(chunk)
        if s.computed < len(s.prompt):
            return []
        self.prefilling.remove(s)
        if s.params.max_tokens == 0:
            s.finish = "length"
            return [self._output(s, [], "", [], None, s.scored)]
        ((_, row, token),) = self._choose(logits[-1:], [s])
        out = self._advance(s, row, token)
        out.prompt_logprobs = s.scored
        self.running.append(s)
        return [out]

    def _choose(self, logits: np.ndarray, rows: list[_Seq]) -> list[tuple[_Seq, np.ndarray, int]]:
        """Each row's next token (:func:`lmforge.generate.choice.choose`), with the row's logits."""
        grammars = self.grammars if any(s.matcher is not None for s in rows) else None
        tokens = choose(logits, rows, self.model.eos_ids, grammars)
        return [(s, logits[i], tokens[i]) for i, s in enumerate(rows)]

    def _advance(self, s: _Seq, logits: np.ndarray, token: int) -> Output:
        """Record ``s``'s next token; update its text, finish state and output."""
        p = s.params
        # logprobs are the model's own distribution, whatever was masked for the choice
        logprobs = [token_logprob(logits, token, p.logprobs)] if p.logprobs is not None else None
        if token in self.model.eos_ids and not p.ignore_eos:  # the end: not part of the completion
            s.finish = "stop"
            s.text.flush()
            delta, _ = s.text.new_text(final=True)  # what was held back for an incomplete character
            return self._output(s, [], delta, [], [] if logprobs is not None else None)
        s.generated.append(token)
        offset = len(s.text.text)
        s.text.add(token)
        delta, cut = s.text.new_text(final=False)
        complete = s.matcher is not None and grammar_complete(s.matcher, token)
        if cut:
            s.finish = "stop"
        elif complete or len(s.generated) >= p.max_tokens or s.length >= s.pool.capacity:  # done, or no room
            s.finish = "stop" if complete else "length"
            s.text.flush()
            delta += s.text.new_text(final=True)[0]
        return self._output(s, [token], delta, [offset], logprobs)

    def _output(self, s: _Seq, token_ids, text: str, offsets, logprobs, prompt_logprobs=None) -> Output:
        return Output(s.id, token_ids, text, offsets, logprobs, s.finish, len(s.prompt), len(s.generated),
                      prompt_logprobs)

    # ------------------------------------------------------------------ leaving
    def _retire(self) -> None:
        for group in (self.running, self.prefilling):
            done = [s for s in group if s.finish is not None]
            for s in done:
                group.remove(s)
                s.pool.release(s.slot)
        if self.model.adapters is not None and self.model.adapters.retired:  # unloaded: gone once unused
            self.model.adapters.collect({s.adapter for s in [*self.running, *self.prefilling, *self.waiting]})

    def _drop_aborted(self) -> list[Output]:
        if not self._aborted:
            return []
        gone = [s for s in [*self.running, *self.prefilling, *self.waiting] if s.id in self._aborted]
        self.waiting = collections.deque(s for s in self.waiting if s.id not in self._aborted)
        for s in gone:
            s.finish = "abort"
        self._retire()
        self._aborted.clear()
        return [self._output(s, [], "", [], None) for s in gone]


def _adapters(rows: list[_Seq]) -> dict[int, int] | None:
    """slot -> adapter uid of the rows that run one (None when all run the base)."""
    return {s.slot: s.adapter for s in rows if s.adapter} or None
