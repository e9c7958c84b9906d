"""LoRA through ``peft``: adapters on a frozen base while training, merged into the weights at the end.

The training worker wraps the base with :func:`wrap` (or reloads a checkpoint's adapter with it);
checkpoints then hold the adapter only, small and quick to write. :func:`merge` turns the best
checkpoint's adapter into a plain HF model dir that every later stage takes, the adapter kept beside.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path


def wrap(base, lora: dict, adapter_dir: Path | None = None):
    """``base`` with trainable LoRA adapters: fresh ones, or those saved in ``adapter_dir``."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def merge(out: Path, base_dir: str) -> None:
    """``out/model`` (the best checkpoint's adapter) -> ``out/adapter``, and ``out/model`` becomes the base
    with the adapter merged in, with the base's tokenizer and generation config."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one shard of a small model: a bar adds nothing to the log

    adapter = out / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    (out / "model").rename(adapter)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with warnings.catch_warnings():  # peft reads a transformers attribute deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(out / "model"), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(str(out / "model"))
