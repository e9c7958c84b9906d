"""Verification of an exported graph against PyTorch: logits parity, greedy text, perplexity.

Every figure lands in ``export.json``, and :func:`gate` fails the stage when one is out of bounds:
logits within ``parity_atol`` at prefill and over several decode steps, greedy generation equal to
``transformers``' ``generate``, and a reduced-precision graph's perplexity within bounds of fp32's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from lmforge import storage
from lmforge.export.config import ExportConfig
from lmforge.generate.onnx_generator import OnnxGenerator, SamplingParams
from lmforge.generate.onnx_model import OnnxModel
from lmforge.generate.sampling import log_softmax

log = logging.getLogger(__name__)

# default bounds over fp32 perplexity; an int8 KV cache adds its own to the weights'
MAX_PPL_INCREASE = {"int8": 0.05, "int4": 0.10, "fp16": 0.01, "kv_int8": 0.02}


def parity(model, onnx_path: Path, cfg: ExportConfig, seed: int = 0) -> dict:
    """Max abs logits difference, PyTorch vs onnxruntime: a prefill of rows of different lengths (the
    shorter right-padded), then decode steps, each row in its own slot of one KV cache."""
    rng = np.random.default_rng(seed)
    onnx = OnnxModel(onnx_path.parent, model_file=onnx_path.name)
    b, t, steps = cfg.parity_batch, cfg.parity_seq_len, cfg.parity_decode_steps
    lengths = np.array([t - (t // 4 if i % 2 else 0) for i in range(b)], np.int32)
    seqs = [rng.integers(3, model.config.vocab_size, size=int(n)).tolist() for n in lengths]
    cache = onnx.new_cache(b, t + steps + 1)
    ids = np.zeros((b, t), np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    index = np.tile(np.arange(t), (b, 1))
    got = onnx.run(cache, 0, ids, lengths, lengths - 1, index)
    diffs = {"prefill": max(_diff(got[i, : len(s)], _torch_logits(model, s)) for i, s in enumerate(seqs))}
    last = [got[i, len(s) - 1] for i, s in enumerate(seqs)]
    for step in range(1, steps + 1):
        for s, row in zip(seqs, last):
            s.append(int(row.argmax()))
        lengths = lengths + 1
        got = onnx.run(cache, 0, np.array([[s[-1]] for s in seqs]), np.ones(b, np.int32), lengths - 1,
                       np.zeros((b, 1), np.int64))[:, 0]
        diffs[f"decode_{step}"] = max(_diff(got[i], _torch_logits(model, s)[-1]) for i, s in enumerate(seqs))
        last = list(got)
    return {"max_abs_diff": max(diffs.values()), "atol": cfg.parity_atol, "steps": diffs}


def adapter_parity(model, onnx_path: Path, adapters: dict[str, str], cfg: ExportConfig, seed: int = 0) -> dict:
    """Per adapter, max abs logits difference between the graph with it applied and peft's model with it
    (unmerged: the same sum, ``W x + B A x``, so float rounding stays as small as the base's), over rows
    of different lengths in one call where the other rows run another adapter or the base (a row must
    never see another row's adapter). That the same adapter merged into the weights and exported on its
    own decides the same tokens is the serving tests' and docs/benchmarks.md's to show."""
    import copy

    from peft import PeftModel

    rng = np.random.default_rng(seed)
    onnx = OnnxModel(onnx_path.parent, model_file=onnx_path.name)
    names = list(adapters)
    for name in names:
        onnx.adapters.load(name, adapters[name])
    t = cfg.parity_seq_len
    seqs = [rng.integers(3, model.config.vocab_size, size=t - i % 3).tolist() for i in range(len(names) + 1)]
    uids = [onnx.adapters.uid(n) for n in names] + [0]  # the last row: the base
    cache = onnx.new_cache(len(seqs), t)
    got = onnx.run_rows(cache, [(i, s, 0, len(s)) for i, s in enumerate(seqs)],
                        adapter_of={i: uid for i, uid in enumerate(uids)})
    report = {"base_row": _diff(got[len(names)], _torch_logits(model, seqs[-1]))}
    for i, name in enumerate(names):
        with_adapter = PeftModel.from_pretrained(copy.deepcopy(model), adapters[name]).eval()
        report[name] = _diff(got[i], _torch_logits(with_adapter, seqs[i]))
    return report


def _torch_logits(model, seq: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0].numpy()


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


GREEDY_PROMPT = "The history of the city"


def torch_greedy(model, model_dir: Path, n_tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids, ``transformers`` greedy continuation of ``n_tokens``, eos kept from being chosen)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok(GREEDY_PROMPT, return_tensors="pt").input_ids
    n_tokens = min(n_tokens, model.config.max_position_embeddings - ids.shape[1])  # within the context
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id or 0, attention_mask=torch.ones_like(ids))
    return ids[0].tolist(), out[0, ids.shape[1]:].tolist()


def onnx_greedy(model_dir: Path, onnx_path: Path, prompt: list[int], n_tokens: int) -> list[int]:
    gen = OnnxGenerator(model_dir, model_file=onnx_path.name)
    # min_tokens matches generate's min_new_tokens: both keep eos from being chosen, so both run n_tokens.
    params = SamplingParams(max_tokens=n_tokens, temperature=0, min_tokens=n_tokens)
    return gen.generate_ids([prompt], params)[0]


def greedy_matches(model, model_dir: Path, onnx_path: Path, n_tokens: int) -> bool:
    """Greedy ``n_tokens`` from our generator == ``transformers`` ``generate`` on the same prompt."""
    prompt, want = torch_greedy(model, model_dir, n_tokens)
    return onnx_greedy(model_dir, onnx_path, prompt, len(want)) == want


def agreement(model, model_dir: Path, onnx_path: Path, n_tokens: int) -> dict:
    """How close a reduced-precision graph decides to PyTorch's fp32 model.

    ``greedy_prefix``: greedy tokens equal to ``transformers``' before the first difference (after one,
    the two continue from different text, so later positions say little). ``top1_agreement``: with
    PyTorch's greedy text fed to both (teacher forcing), the share of positions where both pick the
    same next token; a quantization slip that flips close calls shows here first."""
    prompt, want = torch_greedy(model, model_dir, n_tokens)
    got = onnx_greedy(model_dir, onnx_path, prompt, len(want))
    prefix = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    ids = np.array([prompt + want[:-1]], dtype=np.int64)
    quant = OnnxModel(model_dir, model_file=onnx_path.name).logits([ids[0].tolist()], [len(prompt) - 1])[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits[0, len(prompt) - 1:].numpy()
    return {"greedy_tokens": len(want), "greedy_prefix": prefix,
            "top1_agreement": float((quant.argmax(-1) == ref.argmax(-1)).mean()),
            "max_abs_logit_diff": float(np.abs(quant - ref).max()), "max_abs_logit": float(np.abs(ref).max())}


def held_out_text(path: str, max_docs: int, skip: int = 0) -> str:
    """Held-out text for perplexity: up to ``max_docs`` records of a .jsonl (``text`` or ``document``
    field) or paragraphs of a .txt file, after the first ``skip``."""
    local = storage.resolve_local(path)
    if not Path(local).is_file():
        raise FileNotFoundError(f"ppl_text: {path} does not exist")
    with open(local, encoding="utf-8") as f:
        if local.endswith(".jsonl"):
            records = (json.loads(line) for line in f if line.strip())
            docs = [r.get("text") or r.get("document") or "" for r in records]
        else:
            docs = [p for p in f.read().split("\n\n") if p.strip()]
    return "\n\n".join(docs[skip: skip + max_docs])


def perplexity(onnx_path: Path, model_dir: Path, text: str, window: int, max_windows: int = 8) -> float:
    """exp(mean next-token NLL) over up to ``max_windows`` non-overlapping windows of ``window`` tokens."""
    onnx = OnnxModel(model_dir, model_file=onnx_path.name)
    ids = onnx.tokenizer(text, verbose=False).input_ids  # longer than the context
    window = min(window, onnx.max_positions - 1)
    nll, count = 0.0, 0
    for start in range(0, min(len(ids) - 1, window * max_windows), window):
        chunk = ids[start : start + window + 1]
        logp = log_softmax(onnx.logits([chunk[:-1]])[0])
        nll -= logp[np.arange(len(chunk) - 1), chunk[1:]].sum()
        count += len(chunk) - 1
    return float(np.exp(nll / max(count, 1)))


def gate(report: dict, cfg: ExportConfig, partial: Path) -> None:
    """Raise with every problem when a figure of ``report`` is out of bounds."""
    diff, ppl = report["parity"]["max_abs_diff"], report.get("perplexity", {})
    log.info("export: logits max abs diff %.2e (atol %.0e), greedy equal: %s, perplexity %s", diff,
             cfg.parity_atol, report["greedy_matches_transformers"], ppl or "not measured (no ppl_text)")
    problems = []
    # written as "not within" so that NaN fails: a diverged checkpoint's NaN weights give NaN logits on
    # both sides, whose difference compares False against any bound, and equal argmaxes
    if not np.isfinite(diff):
        problems.append("logits are not finite: the model holds NaN or inf weights (a diverged training?)")
    elif not diff <= cfg.parity_atol:
        problems.append(f"ONNX logits differ from PyTorch by {diff:.3e} > {cfg.parity_atol:.0e}")
    if not report["greedy_matches_transformers"]:
        problems.append("greedy generation differs from transformers' generate")
    if "adapters" in report and report["precision"] == "fp32":  # reduced precision: reported, not gated
        worse = {k: v for k, v in report["adapters"]["parity"].items() if not v <= cfg.parity_atol}
        if worse:
            problems.append(f"logits with adapters differ from PyTorch with them (peft): {worse} > "
                            f"{cfg.parity_atol:.0e}")
    limit = cfg.max_ppl_increase
    if limit is None:
        limit = MAX_PPL_INCREASE.get(cfg.quantize, 0) + (MAX_PPL_INCREASE["kv_int8"] if cfg.kv_cache == "int8" else 0)
    if not all(np.isfinite(v) for v in ppl.values()):
        problems.append(f"perplexity is not finite: {ppl}")
    elif not ppl.get("increase", 0) <= limit:
        what = " + ".join([cfg.quantize] * (cfg.quantize != "none") + ["int8 KV cache"] * (cfg.kv_cache == "int8"))
        problems.append(f"{what} perplexity +{ppl['increase']:.1%} > {limit:.1%} of fp32")
    if problems:
        raise RuntimeError(f"export: {'; '.join(problems)} (see {partial / 'export.json'})")
