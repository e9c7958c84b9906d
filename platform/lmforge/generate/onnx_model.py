"""An ``lmforge export`` dir loaded for generation: the onnxruntime session, tokenizer and model facts.

The graph takes ``input_ids``, ``attention_mask`` (past + new), ``position_ids`` and the past key/values,
and returns logits for every new position and the present key/values. :meth:`OnnxModel.run` is one call
of it; the engine (:mod:`lmforge.generate.engine`) decides what to feed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def position_ids_for(attention_mask: np.ndarray) -> np.ndarray:
    """Positions counted over real tokens only, so left padding does not shift them."""
    pos = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask > 0, pos, 0).astype(np.int64)


class OnnxModel:
    """``model.onnx`` (with KV cache) + tokenizer from an export dir."""

    def __init__(self, model_dir: str | Path, intra_op_threads: int = 0, model_file: str = "model.onnx",
                 device: str = "cpu", spin: bool = True):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / model_file).is_file():
            raise FileNotFoundError(f"{model_dir} has no {model_file}: run `lmforge export` first")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads  # 0 lets onnxruntime pick
        if not spin:  # idle threads sleep instead of spinning: a server shares its cores with the serving stack
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.model_dir / model_file), opts, providers=PROVIDERS[device])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.past_dims = {n: (inputs[n].shape[1], inputs[n].shape[3]) for n in self.past_names}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        hf_config = json.loads((self.model_dir / "config.json").read_text())
        self.max_positions = int(hf_config.get("max_position_embeddings") or hf_config.get("n_positions") or 2048)
        eos = hf_config.get("eos_token_id", self.tokenizer.eos_token_id)
        self.eos_ids = sorted(set(eos if isinstance(eos, list) else [eos]) - {None})
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, h, 0, d), np.float32) for n, (h, d) in self.past_dims.items()}

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
            past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One graph call: logits ``[B, T, V]`` and the new past (``attention_mask``'s length)."""
        out = self.session.run(self.output_names, {"input_ids": input_ids, "attention_mask": attention_mask,
                                                   "position_ids": position_ids, **past})
        return out[0], dict(zip(self.past_names, out[1:]))

    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Left-padded prompts in one call: logits ``[b, T, V]``, their past and their mask ``[b, T]``."""
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
        logits, past = self.run(ids, mask, position_ids_for(mask), self.empty_past(len(prompts)))
        return logits, past, mask
