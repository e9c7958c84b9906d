"""OpenAI wire format: request validation and response bodies the official client accepts."""

import pytest
from pydantic import ValidationError

from lmforge.generate.onnx_generator import Completion
from lmforge.serve import openai_api
from lmforge.serve.openai_api import CompletionRequest


def test_request_defaults_and_sampling_params():
    req = CompletionRequest(prompt="hi", max_tokens=5, temperature=0, stop="\n")
    assert req.prompts() == ["hi"]
    params = req.sampling()
    assert (params.max_tokens, params.temperature, params.stop) == (5, 0.0, ["\n"])
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]


@pytest.mark.parametrize("bad", [{"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"n": 2}])
def test_invalid_requests_are_rejected(bad):
    with pytest.raises(ValidationError):
        CompletionRequest(prompt="x", **bad)


def test_completion_body_shape_and_usage():
    body = openai_api.completion_body("m", [Completion("abc", "length", 3, 4), Completion("d", "stop", 2, 1)])
    assert body["object"] == "text_completion" and body["model"] == "m"
    assert [c["text"] for c in body["choices"]] == ["abc", "d"]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    assert openai_api.models_body("m")["data"][0]["id"] == "m"
