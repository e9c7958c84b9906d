"""KV-free ONNX generator: prompts -> completions on onnxruntime, for the exported ``model.onnx``.

Each step runs the whole (left-padded) sequence through the graph and samples the next token; the
KV-cache graph of the export issue replaces this recompute without changing the interface.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmforge.generate.sampling import sample_next


@dataclass(kw_only=True)
class SamplingParams:
    max_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class Completion:
    text: str
    finish_reason: str | None  # "stop" (eos or a stop string), "length", or None while running
    prompt_tokens: int
    completion_tokens: int


class OnnxGenerator:
    """Loads ``model.onnx`` + tokenizer from an export dir and generates text."""

    def __init__(self, model_dir: str | Path, intra_op_threads: int = 0):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "model.onnx").is_file():
            raise FileNotFoundError(f"{model_dir} has no model.onnx: run `lmforge export` first")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads  # 0 lets onnxruntime pick
        self.session = ort.InferenceSession(str(self.model_dir / "model.onnx"), opts,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        hf_config = json.loads((self.model_dir / "config.json").read_text())
        self.max_positions = int(hf_config.get("max_position_embeddings", 2048))
        eos = hf_config.get("eos_token_id", self.tokenizer.eos_token_id)
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Complete every prompt (one batch); returns one Completion per prompt, in order."""
        steps = list(self.stream(prompts, params))
        return steps[-1] if steps else []

    def stream(self, prompts: list[str], params: SamplingParams) -> Iterator[list[Completion]]:
        """Yield the completions so far after every decoding step (for streaming responses).

        ``finish_reason`` stays None until a prompt finishes: on eos or a stop string ("stop") or, in
        the last yield, on running out of tokens ("length").
        """
        prompt_ids = [self.tokenizer(p).input_ids[-self.max_positions + 1 :] for p in prompts]
        new: list[list[int]] = [[] for _ in prompts]
        done: list[str | None] = [None] * len(prompts)
        rng = np.random.default_rng(params.seed)
        budget = min(params.max_tokens, self.max_positions - max(len(p) for p in prompt_ids))
        for step in range(budget):
            logits = self._last_logits([p + n for p, n in zip(prompt_ids, new)])
            next_ids = sample_next(logits, params.temperature, params.top_k, params.top_p, rng)
            for i, tok in enumerate(next_ids.tolist()):
                if done[i] is None:
                    done[i] = self._append(new[i], tok, params.stop)
            last = all(d is not None for d in done) or step == budget - 1
            yield self._completions(prompt_ids, new, done, params.stop, final=last)
            if last:
                return
        yield self._completions(prompt_ids, new, done, params.stop, final=True)

    def _append(self, ids: list[int], tok: int, stop: list[str]) -> str | None:
        if tok in self.eos_ids:
            return "stop"
        ids.append(tok)
        if stop and any(s in self.tokenizer.decode(ids, skip_special_tokens=True) for s in stop):
            return "stop"
        return None

    def _completions(self, prompt_ids, new, done, stop, final: bool) -> list[Completion]:
        out = []
        for p, n, d in zip(prompt_ids, new, done):
            text = self.tokenizer.decode(n, skip_special_tokens=True)
            for s in stop:
                text = text.split(s, 1)[0] if s in text else text
            out.append(Completion(text, d or ("length" if final else None), len(p), len(n)))
        return out

    def _last_logits(self, sequences: list[list[int]]) -> np.ndarray:
        """Logits of the last real token of each sequence, batched with left padding."""
        width = max(len(s) for s in sequences)
        ids = np.full((len(sequences), width), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, s in enumerate(sequences):
            ids[i, width - len(s):] = s
            mask[i, width - len(s):] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_for(mask)}
        logits = self.session.run(["logits"], feeds)[0]
        return logits[:, -1, :]


def position_ids_for(attention_mask: np.ndarray) -> np.ndarray:
    """Positions counted over real tokens only, so left padding does not shift them."""
    pos = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask > 0, pos, 0).astype(np.int64)
