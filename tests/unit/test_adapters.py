"""LoRA adapters served beside their base: one export, adapters as inputs, rows of different adapters in a
batch, each equal to its own merged export (no Ray)."""

import json

import numpy as np
import pytest

from lmforge.generate.adapters import AdapterError, AdapterNotFound, AdapterSet, read_adapter
from lmforge.generate.engine import Engine, SamplingParams
from lmforge.generate.onnx_model import OnnxModel
from tests.conftest import make_lora_adapter
from tests.unit.conftest import ALL_LINEAR

PROMPTS = ["The river", "서울은 대한민국의", "A much longer prompt that has a few more tokens in it than the others",
           "Question: who wrote it? Answer:"]
GREEDY = SamplingParams(max_tokens=10, temperature=0, logprobs=0, ignore_eos=True)


def _served(lora_export, lora_adapters) -> OnnxModel:
    model = OnnxModel(lora_export)
    for name in lora_adapters:
        model.adapters.load(name, lora_export / "adapters" / name)
    return model


def _run(engine: Engine, requests: list[tuple[str, str, str | None]], stagger: bool = True) -> dict[str, list]:
    """(id, prompt, adapter) requests, one joining per step when staggered; id -> [(token, logprob)]."""
    pending, outs = list(requests), {}
    while pending or engine.has_work():
        for rid, prompt, adapter in pending[:1] if stagger else pending:
            engine.add(rid, engine.model.tokenizer(prompt).input_ids, GREEDY, adapter=adapter)
        pending = pending[1:] if stagger else []
        for out in engine.step():
            outs.setdefault(out.request_id, []).extend((lp.token_id, lp.logprob) for lp in out.logprobs or [])
    return outs


def _assert_same(got, want):
    assert [t for t, _ in got] == [t for t, _ in want]
    np.testing.assert_allclose([lp for _, lp in got], [lp for _, lp in want], atol=1e-4)


def test_the_export_checks_each_adapter_against_pytorch_with_it_merged(lora_export, lora_adapters):
    report = json.loads((lora_export / "export.json").read_text())["adapters"]
    assert set(report["modules"]) == set(ALL_LINEAR) and report["targets"] == 2 * len(ALL_LINEAR)
    assert report["parity"]["base_row"] < 1e-4 and all(report["parity"][n] < 1e-4 for n in lora_adapters)
    assert sorted(p.name for p in (lora_export / "adapters").iterdir()) == sorted(lora_adapters)


def test_mixed_adapter_rows_in_one_batch_each_equal_their_merged_export(lora_export, lora_adapters, merged_exports,
                                                                        onnx_dir):
    """Base and both adapters interleaved in one engine (a request joining every step): every row's tokens
    and logprobs equal its own model alone (a row reading another row's adapter, or a mask in the wrong
    columns, changes them; the adapters change the base's logits, so the base is no stand-in)."""
    mixed = [(f"{i}", p, [None, "qa", "sum"][i % 3]) for i, p in enumerate(PROMPTS * 2)]
    got = _run(Engine(_served(lora_export, lora_adapters), max_running=8), mixed)
    refs = {None: OnnxModel(onnx_dir), **{n: OnnxModel(d) for n, d in merged_exports.items()}}
    for rid, prompt, adapter in mixed:
        want = _run(Engine(refs[adapter], max_running=1), [("x", prompt, None)])["x"]
        _assert_same(got[rid], want)
    assert not np.allclose([lp for _, lp in got["1"]], [lp for _, lp in
                           _run(Engine(refs[None], max_running=1), [("x", PROMPTS[1], None)])["x"]], atol=1e-3)


def test_a_slot_computed_with_one_adapter_is_never_reused_for_another(lora_export, lora_adapters, merged_exports):
    """The same prompt with qa, then sum, then the base: keys and values differ per adapter, so the slot
    qa left behind must not serve sum's prefix (its tokens would match, its cache would not)."""
    engine = Engine(_served(lora_export, lora_adapters), max_running=1)
    prompt = PROMPTS[2]
    for adapter in ("qa", "sum"):
        got = _run(engine, [(adapter, prompt, adapter)])[adapter]
        _assert_same(got, _run(Engine(OnnxModel(merged_exports[adapter]), max_running=1), [("x", prompt, None)])["x"])
    assert engine.prefix_hit_rate == 0.0
    _run(engine, [("again", prompt, "sum")])
    assert engine.prefix_hit_rate > 0.3  # the same adapter does reuse it


def test_unloading_waits_for_running_requests_and_refuses_new_ones(lora_export, lora_adapters, merged_exports):
    model = _served(lora_export, lora_adapters)
    engine = Engine(model, max_running=4)
    width = model.adapters.stack.width
    engine.add("running", model.tokenizer(PROMPTS[0]).input_ids, GREEDY, adapter="sum")
    engine.step()
    model.adapters.unload("sum")
    with pytest.raises(AdapterNotFound, match="sum"):
        engine.add("late", model.tokenizer(PROMPTS[0]).input_ids, GREEDY, adapter="sum")
    assert model.adapters.stack.width == width  # still in use
    outs = _run(engine, [])
    want = _run(Engine(OnnxModel(merged_exports["sum"]), max_running=1), [("x", PROMPTS[0], None)])["x"]
    _assert_same(outs["running"], want[1:])  # the first token came with the step before the unload
    assert model.adapters.stack.width == width - 8 and "sum" not in model.adapters.names
    assert model.adapters.stack.inputs["lora.model.layers.0.self_attn.q_proj.A"].shape[1] == 4


def test_adapters_the_graph_cannot_serve_are_refused_with_the_reason(hf_dir, lora_adapters, onnx_dir, tmp_path):
    from lmforge.export import onnx_export
    from lmforge.export.config import ExportConfig

    attention_only = onnx_export.run(ExportConfig(model=str(hf_dir), output=str(tmp_path / "qv"),
                                                  adapters=[f"qa={lora_adapters['qa']}"]))
    model = OnnxModel(attention_only)
    with pytest.raises(AdapterError, match="adapts model.layers.0.mlp.down_proj, which this export has no LoRA "
                                           "inputs for.*q_proj, v_proj"):
        model.adapters.load("sum", lora_adapters["sum"])
    with pytest.raises(AdapterError, match="not a LoRA adapter dir"):
        model.adapters.load("nothing", tmp_path)
    config = json.loads((lora_adapters["qa"] / "adapter_config.json").read_text())
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (dora / "adapter_model.safetensors").write_bytes((lora_adapters["qa"] / "adapter_model.safetensors").read_bytes())
    with pytest.raises(AdapterError, match="use_dora"):
        model.adapters.load("dora", dora)
    with pytest.raises(AdapterNotFound, match="not loaded"):
        Engine(model).add("x", [5, 6], GREEDY, adapter="missing")
    with pytest.raises(AdapterNotFound, match="takes no LoRA adapters"):
        Engine(OnnxModel(onnx_dir)).add("x", [5, 6], GREEDY, adapter="qa")


def test_an_adapter_of_another_base_is_refused(hf_dir, tmp_path):
    adapter = make_lora_adapter(hf_dir, tmp_path / "a", 4, ["q_proj"], seed=0)
    wider = {"model.layers.0.self_attn.q_proj": (128, 128), "model.layers.1.self_attn.q_proj": (128, 128)}
    with pytest.raises(AdapterError, match="another base model"):
        read_adapter(adapter, wider)
    assert AdapterSet(wider).stack.width == 1  # no adapter: one zero column, so the graph still runs


def test_eval_runs_an_exported_adapter_as_its_merged_export(lora_export, lora_adapters, merged_exports):
    """`eval model=<export>/adapters/qa` scores and generates with the adapter on its base's graph: the same
    log-likelihoods and greedy answers as the merged export (a backend that ignored the adapter would give
    the base's, which differ); a name that is not an export's adapter stays a model path."""
    from lmforge.evaluate.backends import OnnxBackend, load_backend, split_adapter

    assert split_adapter(str(lora_export / "adapters" / "qa")) == (str(lora_export), "qa")
    assert split_adapter(str(lora_export)) == (str(lora_export), None)
    assert split_adapter("runs/x/adapters/qa") == ("runs/x/adapters/qa", None)  # no export there
    root, adapter = split_adapter(str(lora_export / "adapters" / "qa"))
    tuned = load_backend(root, adapter=adapter)
    merged, base = OnnxBackend(str(merged_exports["qa"])), load_backend(str(lora_export))
    ids = [tuned.tokenizer(p).input_ids for p in PROMPTS]
    requests = [(ctx[:-2], ctx[-2:]) for ctx in ids]
    got, want = tuned.loglikelihood(requests), merged.loglikelihood(requests)
    np.testing.assert_allclose([g for g, _ in got], [w for w, _ in want], atol=1e-3)
    assert not np.allclose([g for g, _ in got], [b for b, _ in base.loglikelihood(requests)], atol=1e-2)
    assert tuned.generate(ids, 8, []) == merged.generate(ids, 8, [])
