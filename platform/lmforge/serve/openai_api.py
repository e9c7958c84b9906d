"""The OpenAI API's requests, as OpenAI defines them, validated; no Ray here.

https://platform.openai.com/docs/api-reference/completions and .../chat: the official ``openai`` client
works against lmforge unchanged. Fields OpenAI has and lmforge does not implement are accepted when
they ask for nothing (``presence_penalty: 0``) and refused with a 400 naming them otherwise; unknown
fields are ignored, as clients send extras. Extensions, as vLLM has them: ``top_k``, ``min_tokens``, and
structured output beside OpenAI's ``response_format``: ``guided_json``, ``guided_regex``,
``guided_choice``, ``guided_grammar`` (a Lark grammar, llguidance's dialect) and the newer
``structured_outputs: {json | regex | choice | grammar | json_object}`` shape; at most one per request.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from lmforge.generate.constraints import Constraint
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
    response_format: dict[str, Any] | None = None  # OpenAI's: text, json_object, json_schema
    guided_json: dict[str, Any] | StrictStr | None = None  # extensions (vLLM's): structured output
    guided_regex: StrictStr | None = None
    guided_choice: Annotated[list[StrictStr], Field(min_length=1)] | None = None
    guided_grammar: StrictStr | None = None
    structured_outputs: dict[str, Any] | None = None

    def unsupported(self) -> None:
        """Refuse what would silently change the output if ignored."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise RequestError(f"{name} is not supported by this server; leave it at 0", name)
        if self.logit_bias:
            raise RequestError("logit_bias is not supported by this server", "logit_bias")

    def constraint(self) -> Constraint | None:
        """The structured output asked for, if any; a 400 for a malformed or doubled request of it."""
        asked = [_response_format(self.response_format), _guided(self), _structured(self.structured_outputs)]
        asked = [c for c in asked if c is not None]
        if len(asked) > 1:
            raise RequestError(f"one structured output per request: got {', '.join(c.param for c in asked)}",
                               asked[1].param)
        return asked[0] if asked else None

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
                              logprobs=logprobs, prompt_logprobs=prompt_logprobs, constraint=self.constraint())


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
        return _as_list(self.prompt)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    arguments: StrictStr  # JSON, as OpenAI sends it


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: StrictStr
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: StrictStr | None = None  # which call a tool message answers

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
    tools: list[dict[str, Any]] | None = None  # checked by lmforge.serve.tools
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # one call per answer whatever it says

    def check(self) -> None:
        self.unsupported()
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat(self) -> list[dict]:
        """Messages as chat templates take them (``developer`` is OpenAI's new name for ``system``); a
        tool conversation's calls and results kept."""
        out = []
        for m in self.messages:
            message = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            if m.tool_calls:
                message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.tool_call_id:
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        return out


class EmbeddingRequest(BaseModel):
    """https://platform.openai.com/docs/api-reference/embeddings: the pooling is lmforge's (the mean of
    the final hidden states over the input's tokens, L2-normalised)."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    input: Prompt
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: StrictStr | None = None
    stream: Literal[False] = False  # embeddings are never streamed (the front asks every request)

    def inputs(self) -> list[str | list[int]]:
        """OpenAI's four shapes, as a list of texts or token-id lists."""
        return _as_list(self.input)


def _schema_text(schema: Any, param: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise RequestError(f"{param}: not JSON: {e}", param) from e
    if not isinstance(schema, dict):
        raise RequestError(f"{param}: a JSON schema is an object", param)
    return json.dumps(schema)


def _response_format(fmt: dict | None) -> Constraint | None:
    """OpenAI's ``response_format``: ``{"type": "text" | "json_object"}`` or ``{"type": "json_schema",
    "json_schema": {"name": ..., "schema": {...}, "strict": ...}}`` (the schema is enforced either way)."""
    if not fmt or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return Constraint("json_object", param="response_format")
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise RequestError("response_format: json_schema needs {\"name\": ..., \"schema\": {...}}",
                               "response_format")
        return Constraint("json_schema", _schema_text(spec["schema"], "response_format"), "response_format")
    raise RequestError(f"response_format: type {fmt['type']!r} is not one of text, json_object, json_schema",
                       "response_format")


def _guided(req: _Common) -> Constraint | None:
    """vLLM's ``guided_json``, ``guided_regex``, ``guided_choice``, ``guided_grammar``: at most one."""
    asked = [name for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
             if getattr(req, name) is not None]
    if len(asked) > 1:
        raise RequestError(f"one structured output per request: got {', '.join(asked)}", asked[1])
    return _constraint(asked[0].removeprefix("guided_"), getattr(req, asked[0]), asked[0]) if asked else None


def _structured(spec: dict | None) -> Constraint | None:
    """vLLM's ``structured_outputs``: exactly one of json, regex, choice, grammar, json_object."""
    if spec is None:
        return None
    keys = [k for k in ("json", "regex", "choice", "grammar", "json_object") if spec.get(k) not in (None, False)]
    if len(keys) != 1:
        raise RequestError("structured_outputs: give exactly one of json, regex, choice, grammar, json_object",
                           "structured_outputs")
    return _constraint(keys[0], spec[keys[0]], "structured_outputs")


def _constraint(key: str, value: Any, param: str) -> Constraint:
    """The constraint vLLM's field ``key`` (json, json_object, choice, regex, grammar) asks for."""
    if key == "json":
        return Constraint("json_schema", _schema_text(value, param), param)
    if key == "json_object":
        return Constraint("json_object", param=param)
    if key == "choice":
        if not (isinstance(value, list) and value and all(isinstance(c, str) for c in value)):
            raise RequestError(f"{param}: choice is a non-empty list of strings", param)
        return Constraint("choice", json.dumps(value), param)
    if not isinstance(value, str):
        raise RequestError(f"{param}: {key} is a string", param)
    return Constraint(key, value, param)


def _as_list(prompt) -> list[str | list[int]]:
    """OpenAI's four prompt shapes (a text, texts, token ids, lists of token ids) as a list of prompts."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return list(prompt)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class LoadAdapterRequest(BaseModel):
    """vLLM's ``POST /v1/load_lora_adapter``: load ``lora_name`` from ``lora_path`` (default
    ``<serve.lora_root>/<lora_name>``; it must be under that root) into ``model`` (default: the only one)."""

    model_config = ConfigDict(extra="ignore")

    lora_name: StrictStr
    lora_path: StrictStr | None = None
    model: StrictStr | None = None
    stream: Literal[False] = False


class UnloadAdapterRequest(BaseModel):
    """vLLM's ``POST /v1/unload_lora_adapter``: requests already running with it finish with it."""

    model_config = ConfigDict(extra="ignore")

    lora_name: StrictStr
    model: StrictStr | None = None
    stream: Literal[False] = False
