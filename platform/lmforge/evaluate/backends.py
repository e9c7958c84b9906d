"""The model under evaluation, in process: an ``lmforge export`` dir on onnxruntime, or an HF dir on
PyTorch. Both generate greedily (stop strings honoured) and score continuations by log-likelihood, in
batches; :mod:`lmforge.evaluate.ray_eval` runs them in Ray Data actors, tests call them directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmforge.generate.sampling import log_softmax


def load_backend(model_dir: str, threads: int = 0):
    """An export dir (``model.onnx``) runs on onnxruntime; any other HF dir on PyTorch."""
    if (Path(model_dir) / "model.onnx").is_file():
        return OnnxBackend(model_dir, threads)
    return TorchBackend(model_dir, threads)


def _cut(text: str, stop: list[str]) -> str:
    for s in stop:
        text = text.split(s, 1)[0]
    return text


class _Scoring:
    """Log-likelihood of continuations, from one forward pass over context + continuation each."""

    max_positions: int

    def loglikelihood(self, requests: list[tuple[list[int], list[int]]],
                      batch_size: int = 8) -> list[tuple[float, bool]]:
        """``(sum of the continuation's token logprobs, whether greedy decoding would produce it)`` per
        ``(context ids, continuation ids)``; contexts too long lose their first tokens."""
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: len(requests[i][0]) + len(requests[i][1]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            seqs = []
            for i in chunk:
                ctx, cont = requests[i]
                ctx = ctx[-(self.max_positions - len(cont)):] if len(ctx) + len(cont) > self.max_positions else ctx
                seqs.append((ctx, cont))
            logits = self._logits([c + k for c, k in seqs])  # [b, T, V], right-aligned
            width = logits.shape[1]
            for row, (i, (_, cont)) in enumerate(zip(chunk, seqs)):
                positions = range(width - len(cont) - 1, width - 1)  # the logits predicting each continuation token
                logp = log_softmax(logits[row, list(positions), :])
                out[i] = (float(sum(logp[j, t] for j, t in enumerate(cont))),
                          bool(all(logp[j].argmax() == t for j, t in enumerate(cont))))
        return out


class OnnxBackend(_Scoring):
    def __init__(self, model_dir: str, threads: int = 0):
        from lmforge.generate.onnx_generator import OnnxGenerator

        self.generator = OnnxGenerator(model_dir, intra_op_threads=threads)
        self.tokenizer = self.generator.tokenizer
        self.max_positions = self.generator.model.max_positions

    def generate(self, prompts: list[list[int]], max_tokens: int, stop: list[str]) -> list[str]:
        from lmforge.generate.engine import SamplingParams

        prompts = [p[-(self.max_positions - max_tokens):] for p in prompts]
        done = self.generator.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0, stop=stop))
        return [c.text for c in done]

    def _logits(self, seqs: list[list[int]]) -> np.ndarray:
        logits, _, _ = self.generator.model.prefill(seqs)
        return logits


class TorchBackend(_Scoring):
    def __init__(self, model_dir: str, threads: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        config = self.model.config
        self.max_positions = int(getattr(config, "max_position_embeddings", None) or 2048)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _padded(self, seqs: list[list[int]]):
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
        return ids, mask

    def generate(self, prompts: list[list[int]], max_tokens: int, stop: list[str]) -> list[str]:
        import torch

        ids, mask = self._padded([p[-(self.max_positions - max_tokens):] for p in prompts])
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                      pad_token_id=self.pad_id)
        return [_cut(self.tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True), stop) for row in out]

    def _logits(self, seqs: list[list[int]]) -> np.ndarray:
        import torch

        from lmforge.generate.onnx_model import position_ids_for

        ids, mask = self._padded(seqs)
        positions = torch.from_numpy(position_ids_for(mask.numpy()))
        with torch.no_grad():
            return self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float().numpy()
