"""Continuous batching over a KV-cached ONNX model: requests join between decode steps and leave when done.

Every :meth:`Engine.step` decodes one token for each running sequence, retires the ones that finished
(end of sequence, ``max_tokens``, a stop string, the context, or an abort), then prefills waiting
requests (up to ``max_running`` sequences and ``max_prefill_tokens`` prompt tokens per step) and merges
them into the batch. The batch's key/values are left-padded to a common length, with the attention mask
and per-row position ids keeping each sequence's maths its own. Each request has its own sampling
parameters and random generator, so a seeded request gives the same tokens whatever else is running.
No Ray, no threads: :mod:`lmforge.generate.async_engine` drives it from a server.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from lmforge.generate.onnx_model import OnnxModel
from lmforge.generate.sampling import log_softmax, sample_row


@dataclass(kw_only=True)
class SamplingParams:
    max_tokens: int = 32  # 0 with prompt_logprobs: score the prompt, generate nothing
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    min_tokens: int = 0  # eos cannot be chosen before this many new tokens (vLLM's min_tokens, HF's min_new_tokens)
    logprobs: int | None = None  # None: none; k >= 0: each token's logprob and the k most likely alternatives
    prompt_logprobs: bool = False  # also the prompt tokens' logprobs (OpenAI's echo with logprobs)
    ignore_eos: bool = False  # keep going past end of sequence (benchmarks)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # the most likely tokens at this position


@dataclass
class Output:
    """What one step produced for one request."""

    request_id: str
    token_ids: list[int]
    text: str  # new text (stop strings cut, incomplete UTF-8 held back until it completes)
    text_offsets: list[int]  # where each new token's text starts in the completion
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None  # "stop" (eos or a stop string), "length", "abort", or None while running
    prompt_tokens: int
    completion_tokens: int
    prompt_logprobs: list[TokenLogprob | None] | None = None  # once, with the first output


class ContextLengthError(ValueError):
    """A request that does not fit the model's context."""


@dataclass
class _Seq:
    id: str
    prompt: list[int]
    params: SamplingParams
    rng: np.random.Generator
    generated: list[int] = field(default_factory=list)
    text: str = ""  # the completion decoded so far
    emitted: str = ""  # the part of it already handed out
    finish: str | None = None


class Engine:
    """One model, many concurrent requests. ``add`` and ``abort`` queue work; ``step`` does it."""

    def __init__(self, model: OnnxModel, max_running: int = 16, max_prefill_tokens: int = 4096):
        self.model, self.max_running, self.max_prefill_tokens = model, max_running, max_prefill_tokens
        self.waiting: collections.deque[_Seq] = collections.deque()
        self.running: list[_Seq] = []
        self.past: dict[str, np.ndarray] = {}
        self.mask = np.zeros((0, 0), np.int64)
        self._aborted: set[str] = set()

    # ------------------------------------------------------------------ requests
    def check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise :class:`ContextLengthError` when the prompt and ``max_tokens`` do not fit the context."""
        if not prompt_ids:
            raise ContextLengthError("the prompt has no tokens")
        needed = len(prompt_ids) + params.max_tokens
        if needed > self.model.max_positions:
            raise ContextLengthError(
                f"This model's maximum context length is {self.model.max_positions} tokens. However, you "
                f"requested {needed} tokens ({len(prompt_ids)} in the prompt, {params.max_tokens} in the completion).")

    def add(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        """Queue a request (see :meth:`check`)."""
        self.check(prompt_ids, params)
        seed = None if params.seed is None else params.seed % 2**64  # any integer seeds (OpenAI allows negatives)
        self.waiting.append(_Seq(request_id, list(prompt_ids), params, np.random.default_rng(seed)))

    def reset(self) -> list[str]:
        """Drop every request (after a failed step); returns their ids."""
        ids = [s.id for s in [*self.running, *self.waiting]]
        self.running, self.waiting, self._aborted = [], collections.deque(), set()
        self.past, self.mask = {}, np.zeros((0, 0), np.int64)
        return ids

    def abort(self, request_id: str) -> None:
        """Stop a request (its client went away); its slot is freed at the next step."""
        self._aborted.add(request_id)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # ------------------------------------------------------------------ one step
    def step(self) -> list[Output]:
        """Decode one token for every running sequence, retire the finished, admit waiting requests."""
        outputs = self._drop_aborted()
        if self.running:
            ids = np.array([[s.generated[-1]] for s in self.running], np.int64)
            positions = np.array([[len(s.prompt) + len(s.generated) - 1] for s in self.running], np.int64)
            mask = np.concatenate([self.mask, np.ones((len(self.running), 1), np.int64)], axis=1)
            logits, self.past = self.model.run(ids, mask, positions, self.past)
            self.mask = mask
            outputs += [self._advance(s, row) for s, row in zip(self.running, logits[:, -1, :])]
            self._retire()
        return outputs + self._admit()

    def _admit(self) -> list[Output]:
        new: list[_Seq] = []
        budget = self.max_prefill_tokens
        while self.waiting and len(self.running) + len(new) < self.max_running:
            cost = len(self.waiting[0].prompt)
            if new and cost > budget:  # a prompt over the budget still runs, alone
                break
            new.append(self.waiting.popleft())
            budget -= cost
        if not new:
            return []
        logits, past, mask = self.model.prefill([s.prompt for s in new])
        width = mask.shape[1]
        outputs = []
        for i, s in enumerate(new):
            scored = _prompt_logprobs(logits[i, width - len(s.prompt):], s) if s.params.prompt_logprobs else None
            if s.params.max_tokens == 0:
                s.finish = "length"
                outputs.append(self._output(s, [], "", [], None, scored))
            else:
                out = self._advance(s, logits[i, -1])
                out.prompt_logprobs = scored
                outputs.append(out)
        self._merge(new, past, mask)
        return outputs

    def _advance(self, s: _Seq, logits: np.ndarray) -> Output:
        """Choose ``s``'s next token from its logits; update its text, finish state and output."""
        p = s.params
        choices = logits.astype(np.float32, copy=True)
        if (len(s.generated) < p.min_tokens or p.ignore_eos) and self.model.eos_ids:
            choices[self.model.eos_ids] = -np.inf
        token = sample_row(choices, p.temperature, p.top_k, p.top_p, s.rng)
        # logprobs are the model's own distribution, whatever was masked for the choice
        logprobs = [_token_logprob(logits, token, p.logprobs)] if p.logprobs is not None else None
        if token in self.model.eos_ids and not p.ignore_eos:  # the end: not part of the completion
            s.finish = "stop"
            delta, _ = self._new_text(s)  # what was held back for an incomplete character
            return self._output(s, [], delta, [], [] if logprobs is not None else None)
        s.generated.append(token)
        offset = len(s.text)
        delta, cut = self._new_text(s)
        if cut:
            s.finish = "stop"
        elif len(s.generated) >= p.max_tokens or len(s.prompt) + len(s.generated) >= self.model.max_positions:
            s.finish = "length"
            delta += self._new_text(s)[0]
        return self._output(s, [token], delta, [offset], logprobs)

    def _new_text(self, s: _Seq) -> tuple[str, bool]:
        """The completion's new text since the last output, and whether a stop string cut it."""
        s.text = self.model.tokenizer.decode(s.generated, skip_special_tokens=True)
        text, cut = s.text, False
        for stop in s.params.stop:
            at = text.find(stop, max(0, len(s.emitted) - len(stop)))
            if at >= 0:
                text, cut = text[:at], True
        if not cut and s.finish is None:
            text = text.rstrip("\ufffd")  # the rest of a multi-byte character comes with the next token
            text = text[: len(text) - _held_back(text, s.params.stop)]
        delta = text[len(s.emitted):] if text.startswith(s.emitted) else ""
        s.emitted += delta
        return delta, cut

    def _output(self, s: _Seq, token_ids, text: str, offsets, logprobs, prompt_logprobs=None) -> Output:
        return Output(s.id, token_ids, text, offsets, logprobs, s.finish, len(s.prompt), len(s.generated),
                      prompt_logprobs)

    # ------------------------------------------------------------------ the batch's key/values
    def _merge(self, new: list[_Seq], past: dict[str, np.ndarray], mask: np.ndarray) -> None:
        keep = [i for i, s in enumerate(new) if s.finish is None]
        if not keep:
            return
        length = max(self.mask.shape[1], mask.shape[1])
        if self.running:
            self.past = {n: np.concatenate([_pad_left(self.past[n], length, 2), _pad_left(past[n][keep], length, 2)])
                         for n in past}
            self.mask = np.concatenate([_pad_left(self.mask, length, 1), _pad_left(mask[keep], length, 1)])
        else:
            self.past, self.mask = {n: past[n][keep] for n in past}, mask[keep]
        self.running += [new[i] for i in keep]

    def _retire(self) -> None:
        keep = [i for i, s in enumerate(self.running) if s.finish is None]
        if len(keep) == len(self.running):
            return
        self.running = [self.running[i] for i in keep]
        self.past = {n: a[keep] for n, a in self.past.items()}
        self.mask = self.mask[keep]
        if self.running:  # drop the columns that are padding for every remaining row
            first = int(np.argmax(self.mask.any(axis=0)))
            self.past = {n: np.ascontiguousarray(a[:, :, first:]) for n, a in self.past.items()}
            self.mask = self.mask[:, first:]

    def _drop_aborted(self) -> list[Output]:
        if not self._aborted:
            return []
        gone = [s for s in [*self.running, *self.waiting] if s.id in self._aborted]
        self.waiting = collections.deque(s for s in self.waiting if s.id not in self._aborted)
        for s in gone:
            s.finish = "abort"
        self._retire()
        self._aborted.clear()
        return [self._output(s, [], "", [], None) for s in gone]


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string: they wait for the
    next token, which shows whether the stop completes (and they are cut) or not (and they are sent)."""
    return max((k for stop in stops for k in range(min(len(stop) - 1, len(text)), 0, -1)
                if text.endswith(stop[:k])), default=0)


def _pad_left(a: np.ndarray, length: int, axis: int) -> np.ndarray:
    missing = length - a.shape[axis]
    if missing <= 0:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (missing, 0)
    return np.pad(a, widths)


def _token_logprob(logits: np.ndarray, token: int, top: int | None) -> TokenLogprob:
    logp = log_softmax(logits)
    best = np.argsort(-logp)[:top] if top else []
    return TokenLogprob(int(token), float(logp[token]), [(int(t), float(logp[t])) for t in best])


def _prompt_logprobs(logits: np.ndarray, s: _Seq) -> list[TokenLogprob | None]:
    """Logprob of each prompt token given the ones before it (None for the first, which has no context)."""
    top = s.params.logprobs or 0
    return [None] + [_token_logprob(logits[j - 1], s.prompt[j], top) for j in range(1, len(s.prompt))]
