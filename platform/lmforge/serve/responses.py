"""OpenAI response bodies and stream chunks, built from the engine's outputs; no Ray here.

Completions carry logprobs in the legacy shape (``tokens``, ``token_logprobs``, ``top_logprobs``,
``text_offset``; with ``echo`` the prompt's tokens come first, the first one's logprob ``null``); chat
completions in the chat shape (``content: [{token, logprob, bytes, top_logprobs}]``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from lmforge.generate.requests import Output, TokenLogprob


@dataclass
class Choice:
    """One choice, accumulated from a request's engine outputs."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_logprobs: list[TokenLogprob | None] | None = None
    ttft: float | None = None  # seconds to its first token

    def add(self, out: Output) -> None:
        self.text += out.text
        self.finish_reason = out.finish_reason
        self.token_ids += out.token_ids
        self.logprobs += out.logprobs or []
        self.offsets += out.text_offsets
        self.prompt_tokens, self.completion_tokens = out.prompt_tokens, out.completion_tokens
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# ---------------------------------------------------------------- completions (legacy logprobs)

def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def text_offsets(tokenizer, ids: list[int]) -> list[int]:
    """Where each token's text starts in the decoded text of ``ids``."""
    return [len(tokenizer.decode(ids[:j], skip_special_tokens=True)) for j in range(len(ids))]


def legacy_logprobs(tokenizer, ids: list[int], logprobs: list[TokenLogprob | None], offsets: list[int]) -> dict:
    return {
        "tokens": [token_text(tokenizer, t) for t in ids],
        "token_logprobs": [lp.logprob if lp else None for lp in logprobs],
        "top_logprobs": [{token_text(tokenizer, t): v for t, v in lp.top} if lp else None for lp in logprobs],
        "text_offset": offsets,
    }


def merge_logprobs(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {key: a[key] + b[key] for key in b}


def completion_choice(tokenizer, c: Choice, want_logprobs: bool, echo: tuple[str, list[int]] | None) -> dict:
    """A finished completions choice; ``echo`` is the prompt's (text, ids) when it is returned too."""
    text, logprobs = c.text, None
    if echo is not None:
        prompt_text, prompt_ids = echo
        text = prompt_text + c.text
        if want_logprobs:
            logprobs = legacy_logprobs(tokenizer, prompt_ids, c.prompt_logprobs or [None] * len(prompt_ids),
                                       text_offsets(tokenizer, prompt_ids))
    if want_logprobs:
        base = len(echo[0]) if echo is not None else 0
        logprobs = merge_logprobs(logprobs, legacy_logprobs(tokenizer, c.token_ids, c.logprobs,
                                                            [base + o for o in c.offsets]))
    return {"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason}


def completion_body(request_id: str, model: str, choices: list[dict], prompt_tokens: int,
                    completion_tokens: int) -> dict:
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None, "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}


def completion_chunk(request_id: str, model: str, choice: dict | None, usage_: dict | None = None) -> dict:
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None, "choices": [choice] if choice else [], "usage": usage_}


# ---------------------------------------------------------------- chat (chat logprobs)

def chat_logprobs(tokenizer, ids: list[int], logprobs: list[TokenLogprob]) -> dict:
    def entry(token_id: int, logprob: float) -> dict:
        text = token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(t, lp.logprob), "top_logprobs": [entry(a, v) for a, v in lp.top]}
                        for t, lp in zip(ids, logprobs)], "refusal": None}


def chat_choice(tokenizer, c: Choice, want_logprobs: bool) -> dict:
    return {"index": c.index, "message": {"role": "assistant", "content": c.text, "refusal": None},
            "logprobs": chat_logprobs(tokenizer, c.token_ids, c.logprobs) if want_logprobs else None,
            "finish_reason": c.finish_reason}


def chat_body(request_id: str, model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None, "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}


def chat_chunk(request_id: str, model: str, choice: dict | None, usage_: dict | None = None) -> dict:
    return {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": None, "choices": [choice] if choice else [], "usage": usage_}


def models_body(models: dict[str, dict]) -> dict:
    """``/v1/models``: each served name, with the version of the model behind it and where it comes from."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": info.get("created", 0),
                                        "owned_by": "lmforge", **info} for name, info in models.items()]}


def embeddings_body(model: str, vectors, encoding_format: str, prompt_tokens: int) -> dict:
    """``/v1/embeddings``: base64 is the float32 little-endian bytes of each vector, as OpenAI sends them."""
    import base64

    import numpy as np

    def encode(v):
        if encoding_format == "base64":
            return base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
        return [float(x) for x in v]

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def completion_delta(tokenizer, req, job, out: Output, first: bool) -> dict | None:
    """One streamed completions choice: the new text (after the echoed prompt, first), its legacy logprobs;
    None when a step added nothing to send."""
    index, _, _, echo = job
    text = out.text
    if echo is not None and first:
        text = echo[0] + text
    logprobs = None
    if req.logprobs is not None:
        base = len(echo[0]) if echo else 0
        logprobs = legacy_logprobs(tokenizer, out.token_ids, out.logprobs or [], [base + o for o in out.text_offsets])
        if echo is not None and first:
            prompt = legacy_logprobs(tokenizer, echo[1], out.prompt_logprobs or [None] * len(echo[1]),
                                     text_offsets(tokenizer, echo[1]))
            logprobs = merge_logprobs(prompt, logprobs)
    if not text and not out.finish_reason and not out.token_ids:
        return None
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": out.finish_reason}


def chat_delta(tokenizer, req, index: int, out: Output, first: bool) -> dict | None:
    """One streamed chat choice: the role with the first delta, then content; None when nothing to send."""
    delta = {"role": "assistant", "content": out.text} if first else {"content": out.text}
    if not first and not out.text and not out.finish_reason:
        return None
    logprobs = chat_logprobs(tokenizer, out.token_ids, out.logprobs or []) if req.logprobs else None
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": out.finish_reason}
