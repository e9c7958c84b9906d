"""The OpenAI completions wire format: request validation and response bodies. No Ray here.

Shapes follow https://platform.openai.com/docs/api-reference/completions so the official ``openai``
client works against lmforge unchanged.
"""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel, Field

from lmforge.generate.onnx_generator import Completion, SamplingParams


class CompletionRequest(BaseModel):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)  # an extension (vLLM has it too); 0 = off
    min_tokens: int = Field(default=0, ge=0)  # an extension (vLLM's): no end of sequence before this many
    n: int = Field(default=1, ge=1, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    user: str | None = None

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def sampling(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature,
                              top_k=self.top_k, top_p=self.top_p, seed=self.seed, stop=stop,
                              min_tokens=self.min_tokens)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def completion_body(model: str, completions: list[Completion]) -> dict:
    prompt_tokens = sum(c.prompt_tokens for c in completions)
    completion_tokens = sum(c.completion_tokens for c in completions)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                    for i, c in enumerate(completions)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def models_body(model: str) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "lmforge"}]}
