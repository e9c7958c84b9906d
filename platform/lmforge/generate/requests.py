"""What a request to the engine says and what it gets back: sampling parameters, outputs, refusals."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.generate.constraints import Constraint


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
    constraint: Constraint | None = None  # structured output: every token keeps the text in this grammar


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


class EngineFullError(RuntimeError):
    """The engine's queue has no room for a request's sequences now; the caller may retry later."""
