"""Batch generation on onnxruntime for an ``lmforge export`` dir: a list of prompts in, completions out.

A thin front on :class:`lmforge.generate.engine.Engine` with every prompt queued at once and up to
``max_running`` of them decoded together (the way export verification, evaluation and the generation
benchmark use it); the server drives the same engine with requests arriving at any time. No Ray, no torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from lmforge.generate.engine import Engine, Output, SamplingParams
from lmforge.generate.onnx_model import OnnxModel

__all__ = ["Completion", "OnnxGenerator", "SamplingParams"]


@dataclass
class Completion:
    text: str
    finish_reason: str | None  # "stop" (eos or a stop string), "length", or None while running
    prompt_tokens: int
    completion_tokens: int


class OnnxGenerator:
    """Loads ``model.onnx`` (with KV cache) + tokenizer from an export dir and completes batches of prompts."""

    def __init__(self, model_dir: str | Path, intra_op_threads: int = 0, model_file: str = "model.onnx",
                 max_running: int = 16):
        self.model = OnnxModel(model_dir, intra_op_threads, model_file)
        self.tokenizer = self.model.tokenizer
        self.max_running = max_running

    def engine(self, prompt_ids: list[list[int]], params: SamplingParams, max_running: int | None = None,
               adapter: str | None = None) -> Engine:
        """An engine with every prompt queued (request id: its index); max_tokens capped to fit each
        prompt's context; ``max_running`` slots (default the generator's), as long as the longest needs;
        every prompt with a loaded LoRA ``adapter`` (None: the base)."""
        context = min(max(len(p) for p in prompt_ids) + params.max_tokens, self.model.max_positions)
        slots = min(len(prompt_ids), max_running or self.max_running)
        engine = Engine(self.model, max_running=slots, max_prefill_tokens=2048,
                        max_context=context, short_context=context, max_waiting=len(prompt_ids))
        for i, ids in enumerate(prompt_ids):
            ids = ids[-self.model.max_positions + 1:]
            engine.add(str(i), ids, replace(params, max_tokens=min(params.max_tokens,
                                                                   self.model.max_positions - len(ids))),
                       adapter=adapter)
        return engine

    def decode_steps(self, prompt_ids: list[list[int]], params: SamplingParams,
                     ignore_eos: bool = False) -> Iterator[list[int | None]]:
        """Yield, per step, the next token of every sequence (None once a sequence has finished)."""
        engine = self.engine(prompt_ids, replace(params, ignore_eos=ignore_eos or params.ignore_eos))
        while engine.has_work():
            step: list[int | None] = [None] * len(prompt_ids)
            for out in engine.step():
                if out.token_ids:
                    step[int(out.request_id)] = out.token_ids[-1]
            yield step

    def generate_ids(self, prompt_ids: list[list[int]], params: SamplingParams,
                     ignore_eos: bool = False) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in prompt_ids]
        for step in self.decode_steps(prompt_ids, params, ignore_eos):
            for i, tok in enumerate(step):
                if tok is not None:
                    out[i].append(tok)
        return out

    def stream(self, prompts: list[str | list[int]], params: SamplingParams,
               adapter: str | None = None) -> Iterator[list[Completion]]:
        """Yield the completions so far after every step; ``finish_reason`` is set once a prompt is done.
        A prompt is text or token ids; ``adapter``: a loaded LoRA adapter's name (None: the base)."""
        ids = [p if isinstance(p, list) else self.tokenizer(p, verbose=False).input_ids for p in prompts]
        engine = self.engine(ids, params, adapter=adapter)
        state = [Completion("", None, 0, 0) for _ in prompts]
        while engine.has_work():
            for out in engine.step():
                _update(state[int(out.request_id)], out)
            yield [replace(c) for c in state]

    def generate(self, prompts: list[str | list[int]], params: SamplingParams,
                 adapter: str | None = None) -> list[Completion]:
        """Complete every prompt (one batch); returns one Completion per prompt, in order."""
        result = [Completion("", None, 0, 0) for _ in prompts]
        for result in self.stream(prompts, params, adapter):  # noqa: B007 (the last step's completions are the result)
            pass
        return result


def _update(c: Completion, out: Output) -> None:
    c.text += out.text
    c.finish_reason = out.finish_reason
    c.prompt_tokens, c.completion_tokens = out.prompt_tokens, out.completion_tokens
