"""KV-cached generation on onnxruntime for an ``lmforge export`` dir. No Ray, no torch.

A batch of prompts is left-padded and prefilled in one run of the graph; each decode step then feeds
one token per sequence plus the present key/values of the step before. Greedy and sampling
(temperature, top-k, top-p, seed), stop strings, ``max_tokens``, tokens streamed as they come.
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
    min_tokens: int = 0  # eos cannot be chosen before this many new tokens (vLLM's min_tokens, HF's min_new_tokens)


@dataclass
class Completion:
    text: str
    finish_reason: str | None  # "stop" (eos or a stop string), "length", or None while running
    prompt_tokens: int
    completion_tokens: int


def position_ids_for(attention_mask: np.ndarray) -> np.ndarray:
    """Positions counted over real tokens only, so left padding does not shift them."""
    pos = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask > 0, pos, 0).astype(np.int64)


class OnnxGenerator:
    """Loads ``model.onnx`` (with KV cache) + tokenizer from an export dir and generates text."""

    def __init__(self, model_dir: str | Path, intra_op_threads: int = 0, model_file: str = "model.onnx"):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / model_file).is_file():
            raise FileNotFoundError(f"{model_dir} has no {model_file}: run `lmforge export` first")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads  # 0 lets onnxruntime pick
        self.session = ort.InferenceSession(str(self.model_dir / model_file), opts,
                                            providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.past_dims = {n: (inputs[n].shape[1], inputs[n].shape[3]) for n in self.past_names}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        hf_config = json.loads((self.model_dir / "config.json").read_text())
        self.max_positions = int(hf_config.get("max_position_embeddings") or hf_config.get("n_positions") or 2048)
        eos = hf_config.get("eos_token_id", self.tokenizer.eos_token_id)
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # ------------------------------------------------------------------ token level
    def decode_steps(self, prompt_ids: list[list[int]], params: SamplingParams,
                     ignore_eos: bool = False) -> Iterator[list[int | None]]:
        """Yield, per step, the next token of every sequence (None once a sequence has finished)."""
        b = len(prompt_ids)
        width = max(len(p) for p in prompt_ids)
        ids = np.full((b, width), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, p in enumerate(prompt_ids):
            ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
        past = {n: np.zeros((b, h, 0, d), np.float32) for n, (h, d) in self.past_dims.items()}
        rng = np.random.default_rng(params.seed)
        done = np.zeros(b, dtype=bool)
        budget = min(params.max_tokens, self.max_positions - width)
        pos = position_ids_for(mask)
        eos = sorted(self.eos_ids)
        for n_new in range(max(budget, 0)):
            out = self.session.run(self.output_names, {"input_ids": ids, "attention_mask": mask,
                                                       "position_ids": pos, **past})
            logits = out[0][:, -1, :]
            if n_new < params.min_tokens and eos:
                logits[:, eos] = -np.inf
            past = dict(zip(self.past_names, out[1:]))
            next_ids = sample_next(logits, params.temperature, params.top_k, params.top_p, rng)
            step = []
            for i, tok in enumerate(next_ids.tolist()):
                if done[i]:
                    step.append(None)
                    continue
                if not ignore_eos and tok in self.eos_ids:
                    done[i] = True
                    step.append(None)
                else:
                    step.append(tok)
            yield step
            if done.all():
                return
            ids = np.where(done, self.pad_id, next_ids)[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
            pos = pos[:, -1:] + 1  # the new token follows each row's last real one

    def generate_ids(self, prompt_ids: list[list[int]], params: SamplingParams,
                     ignore_eos: bool = False) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in prompt_ids]
        for step in self.decode_steps(prompt_ids, params, ignore_eos):
            for i, tok in enumerate(step):
                if tok is not None:
                    out[i].append(tok)
        return out

    # ------------------------------------------------------------------ text level
    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Complete every prompt (one batch); returns one Completion per prompt, in order.

        Text is decoded once at the end (``stream`` decodes after every step, for its callers)."""
        prompt_ids, new, reason = self._prepare(prompts)
        for _ in self._advance(prompt_ids, new, reason, params):
            pass
        return self._completions(prompt_ids, new, reason, params.stop, final=True)

    def stream(self, prompts: list[str], params: SamplingParams) -> Iterator[list[Completion]]:
        """Yield the completions so far after every decoding step (for streaming responses).

        ``finish_reason`` stays None until a prompt finishes: on eos or a stop string ("stop") or, in
        the last yield, on running out of tokens ("length").
        """
        prompt_ids, new, reason = self._prepare(prompts)
        for unfinished in self._advance(prompt_ids, new, reason, params):
            if unfinished:
                yield self._completions(prompt_ids, new, reason, params.stop, final=False)
        yield self._completions(prompt_ids, new, reason, params.stop, final=True)

    def _prepare(self, prompts: list[str]):
        prompt_ids = [self.tokenizer(p).input_ids[-self.max_positions + 1 :] for p in prompts]
        return prompt_ids, [[] for _ in prompts], [None] * len(prompts)

    def _advance(self, prompt_ids, new: list[list[int]], reason: list[str | None],
                 params: SamplingParams) -> Iterator[bool]:
        """Run the decode steps, appending to ``new`` and setting ``reason`` in place; yields after each
        step whether any prompt is still running."""
        for step in self.decode_steps(prompt_ids, params):
            for i, tok in enumerate(step):
                if reason[i] is not None:
                    continue
                if tok is None:
                    reason[i] = "stop"  # eos
                    continue
                new[i].append(tok)
                if params.stop and any(s in self.tokenizer.decode(new[i], skip_special_tokens=True)
                                       for s in params.stop):
                    reason[i] = "stop"
            running = any(r is None for r in reason)
            yield running
            if not running:
                return

    def _completions(self, prompt_ids, new, reason, stop, final: bool) -> list[Completion]:
        out = []
        for p, n, r in zip(prompt_ids, new, reason):
            text = self.tokenizer.decode(n, skip_special_tokens=True)
            for s in stop:
                text = text.split(s, 1)[0] if s in text else text
            out.append(Completion(text, r or ("length" if final else None), len(p), len(n)))
        return out
