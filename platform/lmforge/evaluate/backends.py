"""The model under evaluation, in process: an ``lmforge export`` dir on onnxruntime, or an HF dir on
PyTorch. Both generate greedily (stop strings honoured) and score continuations by log-likelihood, in
batches; :mod:`lmforge.evaluate.ray_eval` runs them in Ray Data actors, tests call them directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmforge.generate.sampling import log_softmax


def split_adapter(model: str) -> tuple[str, str | None]:
    """``<export>/adapters/<name>``, a LoRA adapter exported beside its base, -> ``(<export>, <name>)``: it is
    evaluated as served, on the base's graph with the adapter's weights. Any other model -> ``(model, None)``."""
    root, folder, name = ([""] * 3 + model.rstrip("/").rsplit("/", 2))[-3:]
    if folder == "adapters" and root and ("://" in root or (Path(root) / "model.onnx").is_file()):
        return root, name
    return model, None


def load_backend(model_dir: str, threads: int = 0, adapter: str | None = None):
    """An export dir (``model.onnx``) runs on onnxruntime, with one of its ``adapters/`` when named; any
    other HF dir on PyTorch."""
    if (Path(model_dir) / "model.onnx").is_file():
        return OnnxBackend(model_dir, threads, adapter)
    if adapter is not None:
        raise ValueError(f"{model_dir}: adapter {adapter!r} needs an lmforge export (model.onnx) beside it")
    return TorchBackend(model_dir, threads)


def _cut(text: str, stop: list[str]) -> str:
    for s in stop:
        text = text.split(s, 1)[0]
    return text


class _Scoring:
    """Log-likelihood of continuations, as lm-evaluation-harness computes it: one forward pass over
    ``(context + continuation)[:-1]``, the continuation's tokens read off its last positions. Requests
    are sorted by length (little padding) and a single-token continuation shares its pass with every
    other one after the same context (a yes/no or A-D question costs one pass, not two or four)."""

    max_positions: int

    def loglikelihood(self, requests: list[tuple[list[int], list[int]]], batch_size: int = 8,
                      progress=None) -> list[tuple[float, bool]]:
        """``(sum of the continuation's token logprobs, whether greedy decoding would produce it)`` per
        ``(context ids, continuation ids)``; contexts too long lose their first tokens. ``progress(n)`` is
        told how many requests are done after each batch."""
        passes: dict[tuple, tuple[list[int], list[int]]] = {}  # key -> (model input, the requests it answers)
        for i, (ctx, cont) in enumerate(requests):
            inputs = (ctx + cont)[-(self.max_positions + 1):][:-1]
            key = (tuple(inputs),) if len(cont) == 1 else (i,)  # only one-token continuations can share
            passes.setdefault(key, (inputs, []))[1].append(i)
        order = sorted(passes.values(), key=lambda p: -len(p[0]))
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        done, rows = 0, batch_size
        for start in range(0, len(order), rows):
            chunk = order[start : start + rows]
            # a continuation longer than the context window is scored on its last tokens that fit
            scored = {i: requests[i][1][-len(seq):] for seq, members in chunk for i in members}
            keep = max(1, *(len(c) for c in scored.values()))
            logp = self._logprobs([seq for seq, _ in chunk], keep)  # [b, keep, V]: the last positions
            for row, (_, members) in enumerate(chunk):
                for i in members:
                    cont = scored[i]
                    picked = logp[row, keep - len(cont):]
                    out[i] = (float(sum(picked[j, t] for j, t in enumerate(cont))),
                              bool(all(picked[j].argmax() == t for j, t in enumerate(cont))))
                done += len(members)
            if progress:
                progress(done)
        return out


class OnnxBackend(_Scoring):
    """Rows are right-padded, each attending over its own length: a row scores the same in any batch
    (bit for bit, int8 included) and the same as ``serve`` returns for it alone."""

    def __init__(self, model_dir: str, threads: int = 0, adapter: str | None = None):
        from lmforge.generate.onnx_generator import OnnxGenerator

        self.generator = OnnxGenerator(model_dir, intra_op_threads=threads)
        self.tokenizer = self.generator.tokenizer
        self.max_positions = self.generator.model.max_positions
        self.adapter = adapter  # every row runs it (None: the base)
        if adapter is not None:
            if self.generator.model.adapters is None:
                raise ValueError(f"{model_dir}: an export without LoRA inputs cannot run adapter {adapter!r}")
            self.generator.model.adapters.load(adapter, Path(model_dir) / "adapters" / adapter)

    def generate(self, prompts: list[list[int]], max_tokens: int, stop: list[str], batch_size: int = 8,
                 progress=None) -> list[str]:
        """Greedy completions through the continuous-batching engine: ``batch_size`` sequences run at once,
        a finished one's slot goes to the next prompt; prompts enter longest first."""
        from lmforge.generate.engine import SamplingParams

        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        ids = [prompts[i][-(self.max_positions - max_tokens):] for i in order]
        params = SamplingParams(max_tokens=max_tokens, temperature=0, stop=stop)
        engine = self.generator.engine(ids, params, max_running=batch_size, adapter=self.adapter)
        texts, done = [""] * len(prompts), 0
        while engine.has_work():
            for out in engine.step():
                texts[order[int(out.request_id)]] += out.text
                if out.finish_reason is not None:
                    done += 1
                    if progress:
                        progress(done)
        return texts

    def _logprobs(self, seqs: list[list[int]], keep: int) -> np.ndarray:
        """``[b, keep, V]``: each row's last ``keep`` positions (a shorter row's first ones are zeros)."""
        logits = self.generator.model.logits(seqs, [max(0, len(s) - keep) for s in seqs], adapter=self.adapter)
        out = np.zeros((len(seqs), keep, logits[0].shape[-1]))
        for i, rows in enumerate(logits):
            out[i, keep - len(rows):] = log_softmax(rows)
        return out


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

    def generate(self, prompts: list[list[int]], max_tokens: int, stop: list[str], batch_size: int = 8,
                 progress=None) -> list[str]:
        """Greedy completions with transformers' generate (KV cache), ``batch_size`` prompts of like length
        at a time."""
        import torch

        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        texts = [""] * len(prompts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, mask = self._padded([prompts[i][-(self.max_positions - max_tokens):] for i in chunk])
            with torch.no_grad():
                out = self.model.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                          pad_token_id=self.pad_id)
            for i, row in zip(chunk, out):
                texts[i] = _cut(self.tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True), stop)
            if progress:
                progress(start + len(chunk))
        return texts

    def _logprobs(self, seqs: list[list[int]], keep: int) -> np.ndarray:
        """Log-softmax of the last ``keep`` positions only: the output layer and softmax skip the rest."""
        import torch

        ids, mask = self._padded(seqs)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # counted over real tokens: left padding shifts nothing
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=keep).logits
            return torch.log_softmax(logits.float(), dim=-1).numpy()
