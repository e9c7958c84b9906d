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
from lmforge.export.graph import KVModel, kv_names, past_shape
from lmforge.generate.onnx_generator import OnnxGenerator, SamplingParams, position_ids_for

log = logging.getLogger(__name__)

MAX_PPL_INCREASE = {"int8": 0.05, "int4": 0.10, "fp16": 0.01}  # default bounds over fp32 perplexity


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
    past = [np.zeros(past_shape(model, b, 0), np.float32) for _ in past_names]
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
    import onnxruntime as ort

    prompt, want = torch_greedy(model, model_dir, n_tokens)
    got = onnx_greedy(model_dir, onnx_path, prompt, len(want))
    prefix = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    ids = np.array([prompt + want[:-1]], dtype=np.int64)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    feeds |= {n: np.zeros((1, shapes[n][1], 0, shapes[n][3]), np.float32) for n in shapes if n.startswith("past")}
    quant = session.run(["logits"], feeds)[0][0, len(prompt) - 1:]
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits[0, len(prompt) - 1:].numpy()
    return {"greedy_tokens": len(want), "greedy_prefix": prefix,
            "top1_agreement": float((quant.argmax(-1) == ref.argmax(-1)).mean()),
            "max_abs_logit_diff": float(np.abs(quant - ref).max()), "max_abs_logit": float(np.abs(ref).max())}


def held_out_text(path: str, max_docs: int) -> str:
    """Held-out text for perplexity: up to ``max_docs`` records of a .jsonl (``text`` or ``document``
    field) or paragraphs of a .txt file."""
    local = storage.resolve_local(path)
    if not Path(local).is_file():
        raise FileNotFoundError(f"ppl_text: {path} does not exist")
    with open(local, encoding="utf-8") as f:
        if local.endswith(".jsonl"):
            records = (json.loads(line) for line in f if line.strip())
            docs = [r.get("text") or r.get("document") or "" for r in records]
        else:
            docs = [p for p in f.read().split("\n\n") if p.strip()]
    return "\n\n".join(docs[:max_docs])


def perplexity(onnx_path: Path, model_dir: Path, text: str, window: int, max_windows: int = 8) -> float:
    """exp(mean next-token NLL) over up to ``max_windows`` non-overlapping windows of ``window`` tokens."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(model_dir))(text, verbose=False).input_ids  # longer than the context
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
    limit = cfg.max_ppl_increase if cfg.max_ppl_increase is not None else MAX_PPL_INCREASE.get(cfg.quantize, 0)
    if not all(np.isfinite(v) for v in ppl.values()):
        problems.append(f"perplexity is not finite: {ppl}")
    elif not ppl.get("increase", 0) <= limit:
        problems.append(f"{cfg.quantize} perplexity +{ppl['increase']:.1%} > {limit:.1%} of fp32")
    if problems:
        raise RuntimeError(f"export: {'; '.join(problems)} (see {partial / 'export.json'})")
