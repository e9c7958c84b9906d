"""The OpenAI API on one model's engine, without Ray or HTTP: request shapes, bodies, streams, errors."""

import asyncio
import json

import pytest
from pydantic import ValidationError

from lmforge.generate.async_engine import AsyncEngine
from lmforge.generate.engine import Engine
from lmforge.generate.onnx_model import OnnxModel
from lmforge.serve import tools
from lmforge.serve.config import ServeOptions
from lmforge.serve.handlers import ModelEndpoints
from lmforge.serve.openai_api import ChatCompletionRequest, CompletionRequest


def test_the_four_prompt_shapes():
    assert CompletionRequest(prompt="hi").prompts() == ["hi"]
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]
    assert CompletionRequest(prompt=[5, 6, 7]).prompts() == [[5, 6, 7]]
    assert CompletionRequest(prompt=[[5, 6], [7]]).prompts() == [[5, 6], [7]]


@pytest.mark.parametrize("bad", [{"prompt": []}, {"prompt": [[]]}, {"prompt": [True, 2]}, {"prompt": [1, "a"]},
                                 {"prompt": "x", "max_tokens": -1}, {"prompt": "x", "temperature": -1},
                                 {"prompt": "x", "top_p": 0}, {"prompt": "x", "n": 0},
                                 {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, {"prompt": "x", "logprobs": 21}])
def test_invalid_requests_are_rejected_by_the_schema(bad):
    with pytest.raises(ValidationError):
        CompletionRequest(**bad)


@pytest.fixture(scope="module")
def endpoints(onnx_dir):
    engine = AsyncEngine(Engine(OnnxModel(onnx_dir), max_running=8))
    yield ModelEndpoints(engine, "tiny", ServeOptions(max_tokens_limit=32, max_n=3))
    engine.stop()


def _call(coro):
    return asyncio.run(coro)


def _stream(endpoints, method, req) -> list:
    async def collect():
        return [item async for item in getattr(endpoints, method)(req, "req-1")]

    return _call(collect())


def test_completions_body_with_n_echo_and_legacy_logprobs(endpoints):
    req = CompletionRequest(prompt=["The river", "서울은"], max_tokens=4, temperature=0, n=2, echo=True, logprobs=2)
    status, body = _call(endpoints.completions(req, "cmpl-1"))
    assert status == 200 and body["object"] == "text_completion" and body["model"] == "tiny"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    first = body["choices"][0]
    assert first["text"].startswith("The river") and first["finish_reason"] in ("stop", "length")
    lp = first["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    n_prompt = len(endpoints.tokenizer("The river").input_ids)
    assert lp["token_logprobs"][0] is None and None not in lp["token_logprobs"][1:]
    assert lp["top_logprobs"][0] is None and all(len(t) <= 2 for t in lp["top_logprobs"][1:])
    assert lp["text_offset"] == sorted(lp["text_offset"])  # offsets run through prompt and completion
    assert body["choices"][0]["text"] == body["choices"][1]["text"]  # greedy: both choices agree
    prompt_tokens = n_prompt + len(endpoints.tokenizer("서울은").input_ids)  # once per prompt, not per choice
    generated = sum(len(c["logprobs"]["tokens"]) for c in body["choices"]) - 2 * prompt_tokens
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": generated,
                             "total_tokens": prompt_tokens + generated}


def test_token_id_prompts_complete_like_their_text(endpoints):
    ids = endpoints.tokenizer("The river").input_ids
    _, by_text = _call(endpoints.completions(CompletionRequest(prompt="The river", max_tokens=5, temperature=0), "a"))
    _, by_ids = _call(endpoints.completions(CompletionRequest(prompt=[ids, ids], max_tokens=5, temperature=0), "b"))
    assert [c["text"] for c in by_ids["choices"]] == [by_text["choices"][0]["text"]] * 2


def test_echo_with_max_tokens_zero_scores_the_prompt(endpoints):
    status, body = _call(endpoints.completions(CompletionRequest(prompt="The river flows", max_tokens=0,
                                                                 echo=True, logprobs=0), "c"))
    choice = body["choices"][0]
    assert status == 200 and choice["text"] == "The river flows" and body["usage"]["completion_tokens"] == 0
    assert None not in choice["logprobs"]["token_logprobs"][1:]


@pytest.mark.parametrize("req, param, message", [
    (CompletionRequest(prompt="x", max_tokens=33), "max_tokens", "max_tokens: 33 exceeds this server's limit of 32"),
    (CompletionRequest(prompt="x", max_tokens=0), "max_tokens", "max_tokens: 0 is only allowed with echo"),
    (CompletionRequest(prompt="x", n=4), "n", "n: 4 exceeds this server's limit of 3"),
    (CompletionRequest(prompt=[10_000]), "prompt", "prompt: token ids must be below the vocabulary size 500"),
    (CompletionRequest(prompt="word " * 60, max_tokens=30), "prompt", "This model's maximum context length is 64"),
    (CompletionRequest(prompt="x", presence_penalty=1.0), "presence_penalty", "presence_penalty is not supported"),
])
def test_client_errors_are_400_with_param_before_anything_runs(endpoints, req, param, message):
    status, body = _call(endpoints.completions(req, "c"))
    assert status == 400 and body["error"]["param"] == param and body["error"]["message"].startswith(message)
    first = _stream(endpoints, "completions_stream", req.model_copy(update={"stream": True}))
    assert len(first) == 1 and first[0][0] == 400  # a stream refuses before its first event


def test_completion_stream_deltas_add_up_and_usage_comes_last(endpoints):
    req = CompletionRequest(prompt="The river", max_tokens=6, temperature=0, stream=True,
                            stream_options={"include_usage": True})
    items = _stream(endpoints, "completions_stream", req)
    assert items[0] is None and items[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(i[len("data: "):]) for i in items[1:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    _, body = _call(endpoints.completions(req.model_copy(update={"stream": False}), "c"))
    assert text == body["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] is not None
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == body["usage"]


def test_chat_uses_the_default_template_and_stops_at_the_next_turn(endpoints):
    from lmforge.tasks.chat import chat_prompt

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}]
    ids, stop = chat_prompt(endpoints.tokenizer, messages)
    assert endpoints.tokenizer.decode(ids, skip_special_tokens=True) == "System: Be brief.\nUser: Name a river.\n" \
                                                                        "Assistant:"
    assert stop == ["\nUser:"]
    req = ChatCompletionRequest(messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    status, body = _call(endpoints.chat(req, "chat-1"))
    choice = body["choices"][0]
    assert status == 200 and body["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
    content = choice["logprobs"]["content"]
    assert "".join(c["token"] for c in content).startswith(choice["message"]["content"][:1])
    assert all(len(c["top_logprobs"]) == 2 and isinstance(c["bytes"], list) for c in content)
    items = _stream(endpoints, "chat_stream", req.model_copy(update={"stream": True}))
    chunks = [json.loads(i[len("data: "):]) for i in items[1:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == choice["message"]["content"]


def test_chat_refuses_what_it_cannot_do(endpoints):
    base = {"messages": [{"role": "user", "content": "hi"}]}
    for extra, param in (({"tools": [{"type": "function"}]}, "tools"), ({"top_logprobs": 2}, "top_logprobs")):
        status, body = _call(endpoints.chat(ChatCompletionRequest(**base, **extra), "c"))
        assert status == 400 and body["error"]["param"] == param


SCHEMA = {"type": "object", "properties": {"river": {"enum": ["Han", "Nakdong"]},
                                           "km": {"type": "integer", "minimum": 0, "maximum": 999}},
          "required": ["river", "km"], "additionalProperties": False}


def test_structured_output_in_every_request_shape_streamed_and_not(endpoints):
    """OpenAI's response_format (json_schema, json_object) and vLLM's guided_* and structured_outputs, on
    chat and completions: a random model's text is valid by construction, streamed as it is whole."""
    import re

    import jsonschema

    chat = {"messages": [{"role": "user", "content": "A river?"}], "max_tokens": 30, "temperature": 0}
    schema_format = {"type": "json_schema", "json_schema": {"name": "river", "schema": SCHEMA, "strict": True}}
    status, body = _call(endpoints.chat(ChatCompletionRequest(**chat, response_format=schema_format), "c"))
    content = body["choices"][0]["message"]["content"]
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(content), SCHEMA)
    items = _stream(endpoints, "chat_stream", ChatCompletionRequest(**chat, response_format=schema_format,
                                                                    stream=True))
    chunks = [json.loads(i[len("data: "):]) for i in items[1:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == content
    status, body = _call(endpoints.chat(ChatCompletionRequest(**chat, structured_outputs={"json": SCHEMA}), "c"))
    assert json.loads(body["choices"][0]["message"]["content"]) == json.loads(content)  # the same grammar, greedy
    status, body = _call(endpoints.chat(ChatCompletionRequest(**chat, response_format={"type": "json_object"}), "c"))
    assert status == 200 and body["choices"][0]["message"]["content"].startswith("{")

    shapes = [({"guided_regex": "[0-9]{2}:[0-9]{2}"}, lambda t: re.fullmatch("[0-9]{2}:[0-9]{2}", t)),
              ({"guided_choice": ["yes", "no"]}, lambda t: t in ("yes", "no")),
              ({"structured_outputs": {"choice": ["한강", "낙동강"]}}, lambda t: t in ("한강", "낙동강")),
              ({"guided_grammar": 'start: "A" NUM\nNUM: /[1-9]/'}, lambda t: re.fullmatch("A[1-9]", t)),
              ({"guided_json": json.dumps(SCHEMA)}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None)]
    for extra, valid in shapes:
        req = CompletionRequest(prompt=["The river", "서울은"], max_tokens=30, temperature=1.0, seed=3, n=2, **extra)
        status, body = _call(endpoints.completions(req, "c"))
        assert status == 200 and len(body["choices"]) == 4, extra
        assert all(valid(c["text"]) for c in body["choices"]), (extra, [c["text"] for c in body["choices"]])


@pytest.mark.parametrize("extra, param, message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}},
     "response_format", "response_format: Invalid type: frob"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format", "response_format: type 'xml' is not one of"),
    ({"guided_regex": "a(b"}, "guided_regex", "guided_regex: "),
    ({"guided_json": "{not json"}, "guided_json", "guided_json: not JSON"),
    ({"guided_grammar": "start: missing_rule"}, "guided_grammar", "guided_grammar: "),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "one structured output per request"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex", "one structured output"),
    ({"structured_outputs": {"choice": "a"}}, "structured_outputs", "structured_outputs: choice is a non-empty"),
])
def test_a_structured_output_that_cannot_be_built_is_a_400_naming_it(endpoints, extra, param, message):
    for req in (CompletionRequest(prompt="x", **extra),
                ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], **extra)):
        method = "completions" if isinstance(req, CompletionRequest) else "chat"
        status, body = _call(getattr(endpoints, method)(req, "c"))
        assert status == 400 and body["error"]["param"] == param, body
        assert body["error"]["message"].startswith(message), body["error"]["message"]


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "required": ["city"],
                                                          "properties": {"city": {"enum": ["Seoul", "Busan"]}},
                                                          "additionalProperties": False}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "properties": {"utc_offset": {"type": "integer", "minimum": -12, "maximum": 14}},
             "required": ["utc_offset"], "additionalProperties": False}}}]


@pytest.fixture(scope="module")
def tool_endpoints(tmp_path_factory):
    """A tiny model with room for the tools' description in its prompt (1,024 positions)."""
    from lmforge import config as cfgmod
    from lmforge.export import onnx_export
    from lmforge.export.config import ExportConfig
    from tests.conftest import make_tiny_model

    tmp = tmp_path_factory.mktemp("tools")
    hf = make_tiny_model(tmp / "hf", context=1024)
    export = onnx_export.run(cfgmod.from_dict(ExportConfig, {"model": str(hf), "output": str(tmp / "onnx"),
                                                             "parity_greedy_tokens": 8}))
    engine = AsyncEngine(Engine(OnnxModel(export), max_running=4, short_context=1024, long_slots=0))
    yield ModelEndpoints(engine, "tiny", ServeOptions(max_tokens_limit=64, max_n=3))
    engine.stop()


def test_tool_calls_required_named_auto_and_none_streamed_and_not(tool_endpoints):
    """``required`` and a named function constrain the answer to a call whose arguments validate against
    the function's schema, returned in OpenAI's shape (finish_reason tool_calls), and streamed as one
    delta; ``none`` neither shows the tools nor returns calls; a conversation with earlier calls and
    their results is accepted back."""
    import jsonschema
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    base = {"messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 64, "temperature": 0,
            "tools": TOOLS}
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for choice, names in (("required", set(schemas)), ({"type": "function", "function": {"name": "get_time"}},
                                                        {"get_time"})):
        status, body = _call(tool_endpoints.chat(ChatCompletionRequest(**base, tool_choice=choice), "c"))
        assert status == 200, body
        answer = body["choices"][0]
        assert status == 200 and answer["finish_reason"] == "tool_calls" and answer["message"]["content"] is None
        (call,) = answer["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_") and call["function"]["name"] in names
        jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
        items = _stream(tool_endpoints, "chat_stream", ChatCompletionRequest(**base, tool_choice=choice, stream=True))
        (chunk,) = [json.loads(i[len("data: "):]) for i in items[1:-1]]
        streamed = chunk["choices"][0]
        assert streamed["finish_reason"] == "tool_calls"
        assert streamed["delta"]["tool_calls"][0]["function"] == call["function"]  # greedy: the same call
        # the official client's own types, as it builds them from these bodies
        typed = ChatCompletion.model_validate(body).choices[0].message.tool_calls[0]
        assert typed.function.name == call["function"]["name"] and typed.id == call["id"]
        assert ChatCompletionChunk.model_validate(chunk).choices[0].delta.tool_calls[0].function.arguments
    ids, _ = tools.prompt(tool_endpoints.tokenizer, [{"role": "user", "content": "Weather?"}], [])
    status, body = _call(tool_endpoints.chat(ChatCompletionRequest(**base, tool_choice="none"), "c"))
    assert status == 200 and "tool_calls" not in body["choices"][0]["message"]
    assert "get_weather" not in tool_endpoints.tokenizer.decode(ids)
    status, body = _call(tool_endpoints.chat(ChatCompletionRequest(**base, tool_choice="auto"), "c"))
    assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    history = base["messages"] + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Seoul"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21C"}]
    status, body = _call(tool_endpoints.chat(ChatCompletionRequest(**{**base, "messages": history}), "c"))
    assert status == 200
    ids, _ = tools.prompt(tool_endpoints.tokenizer, ChatCompletionRequest(**{**base, "messages": history}).chat(), [])
    assert "Result of call_1: Sunny, 21C" in tool_endpoints.tokenizer.decode(ids)


def test_with_tools_streamed_text_flows_at_once_and_a_call_arrives_whole():
    """``auto``: an answer that cannot be a call (its first character is not ``{``) streams as content from
    its first chunk on; one that starts like a call is held until it ends, then sent as a call, or as the
    content it turned out to be."""
    from types import SimpleNamespace as Out

    fns = tools.functions(TOOLS, "auto")

    def deltas(chunks):
        held, sent = {}, []
        for k, text in enumerate(chunks):
            last = k == len(chunks) - 1
            sent.append(tools.call_delta(held, 0, Out(text=text, finish_reason="stop" if last else None), fns))
        return sent

    plain = deltas([" Hel", "lo", "!"])
    assert [d["delta"].get("content") for d in plain] == [" Hel", "lo", "!"] and plain[0]["delta"]["role"]
    assert plain[-1]["finish_reason"] == "stop"
    call = deltas(['{"name": "get_weather", ', '"arguments": {"city": "Seoul"}', "}"])
    assert call[:2] == [None, None] and call[2]["finish_reason"] == "tool_calls"
    assert call[2]["delta"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Seoul"}'}
    braces = deltas(["{not", " a call}"])
    assert braces[0] is None and braces[1]["delta"]["content"] == "{not a call}"


@pytest.mark.parametrize("extra, param, message", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools",
     "tools[0].function.parameters: a JSON schema of type object"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "tool_choice: names no function"),
    ({"tool_choice": "required"}, "tool_choice", "tool_choice needs tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice",
     "a required tool call and a structured output"),
])
def test_a_tool_request_that_cannot_be_served_is_a_400_naming_it(tool_endpoints, extra, param, message):
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], **extra)
    status, body = _call(tool_endpoints.chat(req, "c"))
    assert status == 400 and body["error"]["param"] == param and body["error"]["message"].startswith(message), body


def test_prompts_times_n_past_the_slots_are_served_in_parts_or_refused_whole(onnx_dir):
    """64 prompts x n=4 against 16 slots: the 256 sequences queue and are served in parts (every choice
    comes back); a request that could never fit is the client's error (400); one that does not fit the
    queue now is refused as a whole (the front turns that into 503/429 with Retry-After)."""
    from lmforge.generate.engine import EngineFullError
    from lmforge.serve.openai_api import RequestError

    engine = AsyncEngine(Engine(OnnxModel(onnx_dir), max_running=16, max_waiting=240))
    endpoints = ModelEndpoints(engine, "tiny", ServeOptions(max_tokens_limit=32, max_n=4))
    try:
        prompts = [f"The river {i}" for i in range(64)]
        status, body = _call(endpoints.completions(CompletionRequest(prompt=prompts, max_tokens=2, n=4), "big"))
        assert status == 200 and len(body["choices"]) == 256
        assert all(c["finish_reason"] in ("stop", "length") for c in body["choices"])
        status, body = _call(endpoints.completions(CompletionRequest(prompt=prompts + ["x"], n=4), "too-big"))
        assert status == 400 and "limit of 256" in body["error"]["message"]
        engine.engine.room = lambda: 3  # as if the queue were nearly full
        with pytest.raises(EngineFullError):
            endpoints._admissible(4)
        endpoints._admissible(3)
        with pytest.raises(RequestError):
            endpoints._admissible(10**4)
    finally:
        engine.stop()


def test_embeddings_are_the_mean_pooled_normalised_hidden_states_of_transformers(endpoints, hf_dir):
    """Every OpenAI input shape, batched: each vector is transformers' final hidden states (the base model's
    ``last_hidden_state``) averaged over the input's tokens and L2-normalised (cosine >= 0.999; a pooling
    over padding, the wrong layer or a missing norm fails), the same alone or in a batch; base64 is the
    float32 bytes of the same vector; bad inputs are 400s."""
    import base64

    import numpy as np
    import torch
    from transformers import AutoModel

    from lmforge.serve.openai_api import EmbeddingRequest

    texts = ["The river flows to the sea", "서울은 대한민국의 수도입니다", "A"]
    status, body = _call(endpoints.embeddings(EmbeddingRequest(input=texts), "e"))
    assert status == 200 and [d["index"] for d in body["data"]] == [0, 1, 2]
    base = AutoModel.from_pretrained(hf_dir).eval()
    ids = [endpoints.tokenizer(t).input_ids for t in texts]
    assert body["usage"] == {"prompt_tokens": sum(map(len, ids)), "total_tokens": sum(map(len, ids))}
    for seq, item in zip(ids, body["data"]):
        with torch.no_grad():
            want = base(torch.tensor([seq])).last_hidden_state[0].mean(0).numpy()
        got = np.array(item["embedding"])
        assert abs(np.linalg.norm(got) - 1) < 1e-5 and got @ want / np.linalg.norm(want) >= 0.999
    _, alone = _call(endpoints.embeddings(EmbeddingRequest(input=ids[1]), "e"))  # token ids, one input
    assert np.allclose(alone["data"][0]["embedding"], body["data"][1]["embedding"], atol=1e-5)
    _, packed = _call(endpoints.embeddings(EmbeddingRequest(input=texts, encoding_format="base64"), "e"))
    decoded = np.frombuffer(base64.b64decode(packed["data"][2]["embedding"]), "<f4")
    assert np.allclose(decoded, body["data"][2]["embedding"], atol=1e-6)
    for req, param in ((EmbeddingRequest(input="x", dimensions=3), "dimensions"),
                       (EmbeddingRequest(input=[[10_000]]), "input"), (EmbeddingRequest(input="word " * 80), "input")):
        status, err = _call(endpoints.embeddings(req, "e"))
        assert status == 400 and err["error"]["param"] == param, err
