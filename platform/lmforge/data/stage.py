"""The ``prepare`` stage's entry (the contract: :mod:`lmforge.stages`); the pipeline is :mod:`.prepare`."""

from __future__ import annotations

import hashlib

from lmforge import storage
from lmforge.data.config import PrepareConfig as Config
from lmforge.report import Section, absent, read, read_json, rerun

SUMMARY = ("corpus files -> cleaned, deduplicated, PII-redacted documents, a BPE tokenizer (or a model's own) "
           "and packed train/val shards (Ray Data)")


def run(cfg: Config):
    from lmforge.data import prepare

    return prepare.run(cfg)


def read_paths(cfg: Config) -> dict[str, str]:
    """The model whose tokenizer packs the rows (``tokenizer.from_model``): a re-imported model makes the
    run stale."""
    return {"tokenizer.from_model": cfg.tokenizer.from_model} if cfg.tokenizer.from_model else {}


def raw_inputs(cfg: Config) -> dict[str, str | None]:
    """The corpus files as they are now, for the run's identity: their count and a hash of every file's
    path, size and modification time. Editing, adding or removing a file makes a finished run stale;
    a corpus that cannot be listed any more (deleted after the run) is None: nothing to compare."""
    from lmforge.data.sources import list_inputs
    from lmforge.outputs import RAW_PREFIX

    try:
        files = storage.stat_files(list_inputs(cfg.inputs, tuple(cfg.splits)))
    except FileNotFoundError:
        return {RAW_PREFIX + "inputs": None}
    digest = hashlib.sha256("".join(f"{f}\0{size}\0{mtime}\n" for f, size, mtime in files).encode()).hexdigest()
    return {RAW_PREFIX + "inputs": f"{len(files)} files, sha256:{digest[:16]}"}


def report(cfg: Config | None, result: dict) -> list[Section]:
    manifest = read_json(cfg.output, "manifest.json") if cfg else None
    if manifest is None:
        return [absent("Corpus", "prepare")]
    docs = manifest["documents"]
    rows = [["input documents", docs["input"]], ["kept", docs["kept"]]]
    rows += [[f"dropped: {reason}", n] for reason, n in sorted(docs["dropped"].items())]
    rows += [[f"quarantined: {reason}", n] for reason, n in sorted(docs.get("quarantine_reasons", {}).items())]
    rows += [["train tokens / rows", f"{manifest['tokens']['train']} / {manifest['rows']['train']}"],
             ["val tokens / rows", f"{manifest['tokens']['val']} / {manifest['rows']['val']}"]]
    section = Section("Corpus", rerun("prepare", cfg.output), [
        f"Every input document is kept, dropped with a reason or quarantined: {docs['input']} in = "
        f"{docs['kept']} kept + {sum(docs['dropped'].values())} dropped + {docs['quarantined']} quarantined."],
        [(["", "documents"], rows)])
    pii, planted = manifest.get("pii") or {}, manifest.get("canaries") or {}
    section.lines.append("PII redacted: " + (", ".join(f"{k} {v}" for k, v in sorted(pii.items())) or "none found")
                         + (f"; canaries: {planted.get('secrets', 0)} secrets planted {planted.get('planted', 0)} "
                            "times, before PII redaction (which, when on, scrubs them too)" if planted else "") + ".")
    if langs := manifest.get("languages"):
        section.lines.append("Languages (kept of input documents): " + ", ".join(
            f"{code} {langs['kept'].get(code, 0)}/{n}" for code, n in langs["input"].items()) + ".")
    if (b := manifest.get("bias")) is not None:
        section.lines.append("Bias statistics: occupations named mostly with one gender: "
                             + (", ".join(b["skewed_occupations"]) or "none") + f" ({b['rule']}; report.md has the "
                             "demographic terms per million words).")
    if png := read(cfg.output, "doc_lengths.png"):
        section.images.append(("Document lengths (words), kept documents", png))
    return [section]

