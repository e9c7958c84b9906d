"""``manifest.json`` of a prepare output: the document ledger's counts, PII, tokens and tokenizer facts.

Other stages read a prepared dir through :func:`read`; ``input == kept + sum(dropped) + quarantined``
always holds, so no document is lost without a count.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lmforge.data import bias


def build(stats: dict, tok, special_tokens: dict, seq_len: int, files: list[str], tokenizer_from: str | None = None
          ) -> dict:
    """The manifest from the summed write-pass counts (:func:`lmforge.data.outputs.sum_stats`);
    ``tokenizer_from``: the model whose tokenizer packed the rows (None: trained on this corpus)."""
    counts, tokens = stats["reasons"], stats["tokens"]
    quarantine = {r: n for r, n in sorted(counts.items()) if r.startswith("quarantine:")}
    dropped = {r: n for r, n in sorted(counts.items()) if r and not r.startswith("quarantine:")}
    return {
        "documents": {"input": sum(counts.values()), "kept": counts.get("", 0), "dropped": dropped,
                      "quarantined": sum(quarantine.values()), "quarantine_reasons": quarantine},
        # documents per detected language, of every input (quarantined: und) and of the kept
        "languages": {k: dict(sorted(stats["languages"][k].items(), key=lambda x: (-x[1], x[0])))
                      for k in ("input", "kept")},
        # demographic terms per million words and occupations named with each gender (lmforge.data.bias)
        "bias": bias.summarize(stats["bias"]["words"], stats["bias"]["terms"], stats["bias"]["occupations"]),
        "pii": {t: n for t, n in sorted(stats["pii"].items()) if n},
        "pii_examples": {t: stats["pii_examples"][t] for t in sorted(stats.get("pii_examples", {}))},
        "canaries": {"planted": sum(len(d) for d in stats.get("canaries", {}).values()),
                     "secrets": len(stats.get("canaries", {}))},
        "tokens": {s: tokens[s]["tokens"] for s in tokens},
        "rows": {s: tokens[s]["rows"] for s in tokens},
        "seq_len": seq_len,
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": special_tokens,
        "tokenizer_from": tokenizer_from,
        "inputs": files,
        "tokenizer_sha256": hashlib.sha256(tok.to_str().encode()).hexdigest(),
    }


def read(data_dir: str | Path) -> dict:
    """The manifest of a prepare output (a local dir or an ``s3://`` one), with a clear error when
    ``data_dir`` is not one."""
    from lmforge import storage

    text = storage.read_text(storage.join(str(data_dir), "manifest.json"))
    if text is None:
        raise FileNotFoundError(f"data: {data_dir} is not a prepare output (no manifest.json)")
    return json.loads(text)


def is_prepared(path: str | Path) -> bool:
    """Whether ``path`` (local) is a prepare output: its manifest and kept ``documents/``."""
    return (Path(path) / "manifest.json").is_file() and (Path(path) / "documents").is_dir()


def kept_documents(path: str | Path, columns: list[str]):
    """The kept documents of a prepare output (local), ``columns`` of them, a table per part file in order."""
    import pyarrow.parquet as pq

    for part in sorted((Path(path) / "documents").glob("*.parquet")):
        yield pq.read_table(part, columns=columns)
