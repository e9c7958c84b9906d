"""The OpenAI API's requests, as OpenAI defines them, validated; no Ray here.

https://platform.openai.com/docs/api-reference/completions and .../chat: the official ``openai`` client
works against lmforge unchanged. Fields OpenAI has and lmforge does not implement are accepted when
they ask for nothing (``presence_penalty: 0``) and refused with a 400 naming them otherwise; unknown
fields are ignored, as clients send extras. Extensions, as vLLM has them: ``top_k``, ``min_tokens``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from lmforge.generate.engine import SamplingParams

TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]
Prompt = StrictStr | Annotated[list[StrictStr], Field(min_length=1)] | TokenIds | Annotated[
    list[TokenIds], Field(min_length=1)]
Stop = StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None


class StreamOptions(BaseModel):
    include_usage: bool = False


class RequestError(ValueError):
    """A request that is well-formed JSON but asks for something this server does not do (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    stop: Stop = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: StrictStr | None = None
    top_k: int = Field(default=0, ge=0)  # extension (vLLM's): 0 = off
    min_tokens: int = Field(default=0, ge=0)  # extension (vLLM's): no end of sequence before this many

    def unsupported(self) -> None:
        """Refuse what would silently change the output if ignored."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise RequestError(f"{name} is not supported by this server; leave it at 0", name)
        if self.logit_bias:
            raise RequestError("logit_bias is not supported by this server", "logit_bias")

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def sampling(self, max_tokens: int, logprobs: int | None, prompt_logprobs: bool = False,
                 choice: int = 0) -> SamplingParams:
        """The engine's parameters for choice ``choice`` of ``n`` (each a seed of its own when seeded)."""
        seed = None if self.seed is None else self.seed + choice
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, seed=seed, stop=self.stops(), min_tokens=self.min_tokens,
                              logprobs=logprobs, prompt_logprobs=prompt_logprobs)


class CompletionRequest(_Common):
    prompt: Prompt
    max_tokens: int | None = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1)
    suffix: StrictStr | None = None

    def check(self) -> None:
        self.unsupported()
        if self.max_tokens == 0 and not self.echo:
            raise RequestError("max_tokens: 0 is only allowed with echo (to score the prompt)", "max_tokens")
        if self.best_of not in (None, self.n):
            raise RequestError("best_of other than n is not supported by this server", "best_of")
        if self.suffix:
            raise RequestError("suffix is not supported by this server", "suffix")

    def prompts(self) -> list[str | list[int]]:
        """The four shapes OpenAI accepts, as a list of text or token-id prompts."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [list(p)]
        return list(p)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Common):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    def check(self) -> None:
        self.unsupported()
        if self.tools:
            raise RequestError("tools are not supported by this server", "tools")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise RequestError("response_format other than text is not supported by this server", "response_format")
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        """Messages as chat templates take them (``developer`` is OpenAI's new name for ``system``)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
