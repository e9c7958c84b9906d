"""The distillation corpus and the student's starting point. Pure Python + transformers, no Ray.

Text from a ``prepare`` output (its kept ``documents/``) or corpus files is tokenized with the teacher's
own tokenizer (a prepare output's rows use prepare's tokenizer, which the teacher does not read) and
packed into rows of ``seq_len`` (each document followed by the teacher's end-of-text token), split
train/val by document id as prepare splits; a ``loss_mask`` marks the real tokens, so padding never
counts whatever id it shares.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmforge import storage

log = logging.getLogger(__name__)


def read_texts(data: str | list[str], text_field: str, limit: int | None) -> tuple[list[str], list[str]]:
    """(ids, texts): a prepare output's kept documents, or every readable record of the files."""
    from lmforge.data import sources

    uris = [data] if isinstance(data, str) else list(data)
    ids, texts = [], []
    for uri in uris:
        local = storage.local_dir(uri) if Path(storage.resolve_local(uri)).is_dir() or uri.startswith("s3://") else uri
        if (Path(local) / "manifest.json").is_file() and (Path(local) / "documents").is_dir():
            table = pq.read_table(Path(local) / "documents", columns=["id", "text"])
            ids += table.column("id").to_pylist()
            texts += table.column("text").to_pylist()
            continue
        for i, path in enumerate(sources.list_inputs([uri])):
            for rec in sources.read_records(path, i, text_field):
                if not rec["reason"]:
                    ids.append(rec["id"])
                    texts.append(rec["text"])
    if limit is not None:
        ids, texts = ids[:limit], texts[:limit]
    if not texts:
        raise ValueError(f"data: {data} holds no documents to distil on")
    return ids, texts


def write_rows(tokenizer, ids: list[str], texts: list[str], seq_len: int, val_fraction: float, out: Path) -> dict:
    """``out/train`` and ``out/val`` rows dirs (``input_ids``, ``loss_mask``) and their counts."""
    from lmforge.data.packing import pack, split_of

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False).input_ids
    splits = [split_of(i, val_fraction) for i in ids]
    counts = {}
    for split in ("train", "val"):
        packed = pack([e for e, s in zip(encoded, splits) if s == split], seq_len, eos, pad)
        mask = (np.arange(seq_len)[None, :] < packed["n_tokens"][:, None]).astype(np.int8)
        (out / split).mkdir(parents=True, exist_ok=True)
        table = pa.table({"input_ids": pa.array(list(packed["input_ids"]), pa.list_(pa.int32())),
                          "loss_mask": pa.array(list(mask), pa.list_(pa.int8()))})
        pq.write_table(table, out / split / "part-0.parquet")
        counts[split] = {"documents": splits.count(split), "rows": len(packed["input_ids"]),
                         "tokens": int(packed["n_tokens"].sum())}
    (out / "counts.json").write_text(json.dumps(counts, indent=2))
    return counts


def same_vocabulary(teacher: str, student: str) -> None:
    """Refuse a student whose tokenizer is not the teacher's (the KL compares distributions over the same
    token ids), naming both vocabularies."""
    from transformers import AutoTokenizer

    t, s = AutoTokenizer.from_pretrained(teacher), AutoTokenizer.from_pretrained(student)
    tv, sv = t.get_vocab(), s.get_vocab()
    if tv != sv:
        differ = sorted(set(tv.items()) ^ set(sv.items()), key=lambda x: x[1])[:3]
        raise ValueError(f"student.init_from: {student}'s tokenizer ({len(sv)} tokens) is not the teacher's "
                         f"({teacher}, {len(tv)} tokens); they differ at {differ}: distillation compares "
                         "distributions over the same token ids")


def layer_copy(teacher: str, layers: int, out: Path) -> list[int]:
    """The teacher with ``layers`` of its blocks, every k-th from the first, as an HF dir (with the
    teacher's tokenizer); returns the teacher layers kept."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    base = getattr(model, model.base_model_prefix)
    blocks_name = "layers" if hasattr(base, "layers") else "h"
    blocks = getattr(base, blocks_name)
    total = len(blocks)
    if layers >= total:
        raise ValueError(f"student.layers: {layers} is not fewer than the teacher's {total} layers")
    keep = [i * total // layers for i in range(layers)]
    setattr(base, blocks_name, torch.nn.ModuleList(blocks[i] for i in keep))
    for j, block in enumerate(getattr(base, blocks_name)):
        attention = getattr(block, "self_attn", None) or getattr(block, "attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = j  # the cache index of the layer in its new place
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(out)
    return keep


def preset_student(teacher: str, preset: str, out: Path) -> None:
    """A fresh preset sized by the teacher's vocabulary, context and special tokens (its tokenizer kept)."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from lmforge.model import presets

    config = AutoConfig.from_pretrained(teacher)
    tok = AutoTokenizer.from_pretrained(teacher)
    specials = {"pad": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                "bos": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id, "eos": tok.eos_token_id}
    context = getattr(config, "max_position_embeddings", None) or config.n_positions
    LlamaForCausalLM(presets.build_config(preset, config.vocab_size, context, specials)).save_pretrained(out)
    tok.save_pretrained(out)
