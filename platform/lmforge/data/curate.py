"""Per-document curation: clean -> decontaminate -> language -> quality rules -> PII redaction -> dedup keys.

Takes a ledger record from :mod:`lmforge.data.sources` and returns it with the cleaned, redacted
text, its language and score (:mod:`lmforge.data.language`), a drop reason if a rule failed (``empty``,
``contaminated:<task>``, ``language:<code>``, ``quality:<rule>``: the rules for that language), per-type
PII counts, the exact-duplicate key and (batched, in :func:`curate_all`) the MinHash signature that the
global dedup step (Ray glue) compares.
"""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa

from lmforge.data import canaries, clean, dedup, language, pii, quality, sources
from lmforge.data.config import PrepareConfig
from lmforge.tasks.contamination import TestIndex

PII_COLUMNS = [f"pii_{t}" for t in pii.PII_TYPES]
# One row per input record: kept (reason ""), dropped with a reason, or quarantined with its raw bytes.
LEDGER_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("order", pa.int64()),
                          ("text", pa.string()), ("reason", pa.string()), ("raw", pa.binary()),
                          *((c, pa.int64()) for c in PII_COLUMNS), ("pii_examples", pa.string()),
                          ("canaries", pa.string()), ("exact_key", pa.int64()), ("minhash", pa.binary()),
                          ("language", pa.string()), ("language_score", pa.float32())])
EXAMPLES_PER_DOC = 3  # masked examples of redactions kept per document, for the report


def curate(rec: dict, cfg: PrepareConfig, plan: CanaryPlan | None = None, tests: TestIndex | None = None,
           found: tuple[str, str, float] | None = None) -> dict:
    """Fill ``text``, ``reason``, ``language``, ``pii_*``, ``canaries``, ``exact_key`` and ``minhash`` of
    one record; ``tests``: the evaluation examples no kept document may share a 13-word n-gram with;
    ``found``: its cleaned text and language already computed (:func:`curate_all` does, in a batch)."""
    rec.update({c: 0 for c in PII_COLUMNS}, pii_examples="", canaries="", exact_key=0, minhash=b"",
               language=language.UNDETERMINED, language_score=0.0)
    if rec["reason"]:  # quarantined while reading
        return rec
    text = found[0] if found else clean.clean(rec["text"])
    if not text:
        rec.update(text="", reason="empty")
        return rec
    if tests is not None and (task := tests.first_task(text)):  # before canaries alter the text
        rec.update(text=text, reason=f"contaminated:{task}")
        return rec
    lang, rec["language_score"] = found[1:] if found else language.detect(text, cfg.language_min_score)
    rec["language"] = lang
    if cfg.languages and lang not in cfg.languages:
        rec.update(text=text, reason=f"language:{lang}")
        return rec
    if plan is not None:  # the privacy audit's secrets go in before quality rules and PII redaction see the text
        text, planted = canaries.plant(text, rec["id"], plan.canaries, plan.rate)
        rec["canaries"] = ",".join(planted)
    rule = quality.failed_rule(text, cfg.quality, lang)
    if rule:
        rec.update(text=text, reason=f"quality:{rule}")
        return rec
    if cfg.pii.enabled:
        examples: list[tuple[str, str]] = []
        text, counts = pii.redact(text, examples)
        rec.update({f"pii_{t}": n for t, n in counts.items()})
        if examples:
            rec["pii_examples"] = json.dumps(examples[:EXAMPLES_PER_DOC], ensure_ascii=False)
    rec["text"] = text
    rec["exact_key"] = dedup.exact_key(text)
    return rec


@dataclasses.dataclass
class CanaryPlan:
    """The canaries to plant and the share of documents each goes into (see :mod:`.canaries`)."""

    canaries: list[canaries.Canary]
    rate: float


def curate_all(records, cfg: PrepareConfig, chunk: int = 4096, plan: CanaryPlan | None = None,
               tests: TestIndex | None = None) -> list[dict]:
    """:func:`curate` every record, then MinHash the kept ones a chunk at a time (vectorised per chunk)."""
    records = list(records)
    texts = [clean.clean(rec["text"]) if not rec["reason"] else "" for rec in records]
    # every text's language in one loop: the model stays in the CPU's cache (interleaved with the rest of
    # curation, each call cost twice as much)
    found = [(text, *language.detect(text, cfg.language_min_score)) for text in texts]
    out = [curate(rec, cfg, plan, tests, f) for rec, f in zip(records, found)]
    for i in range(0, len(out), chunk):
        _add_signatures(out[i : i + chunk], cfg)
    return out


def _add_signatures(records: list[dict], cfg: PrepareConfig) -> None:
    kept = [r for r in records if not r["reason"]]
    if not cfg.dedup.near or not kept:
        return
    sigs = dedup.signatures([r["text"] for r in kept], cfg.dedup.bands * cfg.dedup.rows, cfg.dedup.ngram,
                            cfg.dedup.seed)
    for rec, sig in zip(kept, sigs):
        rec["minhash"] = sig.tobytes()


def curate_file(path: str, file_index: int, cfg: PrepareConfig, plan: CanaryPlan | None = None,
                tests: TestIndex | None = None) -> pa.Table:
    """Read one input file and curate every record into ledger rows (:data:`LEDGER_SCHEMA`), built
    column by column (a row-at-a-time builder cost more than the reading)."""
    records = curate_all(sources.read_records(path, file_index, cfg.text_field, cfg.id_field, cfg.max_doc_bytes),
                         cfg, plan=plan, tests=tests)
    return pa.table({f.name: pa.array([r[f.name] for r in records], f.type) for f in LEDGER_SCHEMA},
                    schema=LEDGER_SCHEMA)
