"""``report.md`` and the document-length histogram of a prepare run. Pure Python + matplotlib."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LENGTH_BINS = np.array([0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, np.inf])


def length_histogram(word_counts: np.ndarray) -> np.ndarray:
    """Counts of documents per word-count bin (fixed log2 bins, so per-shard results add up)."""
    return np.histogram(word_counts, bins=LENGTH_BINS)[0]


def plot_lengths(counts: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"<{int(hi)}" if np.isfinite(hi) else f">={int(lo)}" for lo, hi in zip(LENGTH_BINS, LENGTH_BINS[1:])]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(counts)), counts)
    ax.set_xticks(range(len(counts)), labels, rotation=45, ha="right")
    ax.set_xlabel("words per kept document")
    ax.set_ylabel("documents")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pii_examples(examples: dict[str, list[str]]) -> list[str]:
    """A few redactions per type, in context: the value shown only as its shape (9 per digit, a/A per
    letter), so a false positive (a version number, a ``::``) shows without the corpus being read."""
    if not examples:
        return []
    lines = ["", "Examples (the value as its shape: 9 = digit, a/A = letter, 가 = Hangul):", ""]
    for kind, items in examples.items():
        lines += [f"- {kind}: `{item}`" for item in items]
    return lines


def _languages(counts: dict | None) -> list[str]:
    """Documents per detected language (und: none found, or quarantined before detection)."""
    if not counts:
        return []
    lines = ["## Languages", "", "| language | input | kept |", "| --- | ---: | ---: |"]
    lines += [f"| {code} | {n} | {counts['kept'].get(code, 0)} |" for code, n in counts["input"].items()]
    return lines + [""]


def _bias(stats: dict | None) -> list[str]:
    """Demographic terms per million words, and occupations by the gender they are named with."""
    if not stats:
        return []
    lines = ["## Bias statistics (kept documents)", "",
             f"Per million words ({stats['words']} words; word lists: `lmforge/data/bias.py`):", "",
             "| category | group | per million words |", "| --- | --- | ---: |"]
    lines += [f"| {c} | {g} | {v} |" for c, groups in stats["per_million_words"].items() for g, v in groups.items()]
    skewed = stats["skewed_occupations"]
    lines += ["", "Occupations named in a sentence with a gendered word"
              + (f" — **skewed: {', '.join(skewed)}**" if skewed else " — none skewed") + f" ({stats['rule']}):", "",
              "| occupation | with male | with female | female share |", "| --- | ---: | ---: | ---: |"]
    by_mentions = sorted(stats["occupations_with_gender"].items(), key=lambda x: -x[1]["male"] - x[1]["female"])
    lines += [f"| {o}{' (skewed)' if o in skewed else ''} | {v['male']} | {v['female']} | {v['female_share']} |"
              for o, v in by_mentions]
    return lines + [""]


def render(manifest: dict) -> str:
    docs, tokens = manifest["documents"], manifest["tokens"]
    lines = ["# prepare report", "", "## Documents", "", "| outcome | documents |", "| --- | ---: |",
             f"| input | {docs['input']} |", f"| kept | {docs['kept']} |"]
    lines += [f"| dropped: {r} | {n} |" for r, n in docs["dropped"].items()]
    lines += [f"| {r} | {n} |" for r, n in docs.get("quarantine_reasons", {}).items()]
    total = docs["kept"] + sum(docs["dropped"].values()) + docs["quarantined"]
    lines += ["", f"input = kept + dropped + quarantined: {docs['input']} = {total}", ""]
    lines += _languages(manifest.get("languages"))
    lines += _bias(manifest.get("bias"))
    lines += ["## PII redacted (in kept documents)", "", "| type | spans |", "| --- | ---: |"]
    lines += [f"| {t} | {n} |" for t, n in manifest["pii"].items()] or ["| none | 0 |"]
    lines += _pii_examples(manifest.get("pii_examples", {}))
    lines += ["", "## Tokens", "", "| split | rows | tokens |", "| --- | ---: | ---: |"]
    lines += [f"| {s} | {manifest['rows'][s]} | {tokens[s]} |" for s in tokens]
    source = f"the tokenizer of {m}" if (m := manifest.get("tokenizer_from")) else "a BPE tokenizer trained on it"
    lines += ["", f"seq_len {manifest['seq_len']}, vocab_size {manifest['vocab_size']} ({source})", "",
              "## Document lengths", "", "![document lengths](doc_lengths.png)", ""]
    return "\n".join(lines)
