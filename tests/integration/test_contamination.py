"""Test-set contamination end to end: held-out BoolQ and XSum passages planted in a corpus are dropped by
``prepare decontaminate=[boolq, xsum]`` (and nothing else is), and an eval of a model trained on the corpus
without it counts them through the model's lineage (eval -> pretrain's config -> the prepare output)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from lmforge import config as cfgmod
from lmforge.data import prepare
from lmforge.data.config import PrepareConfig
from lmforge.evaluate import evaluation
from lmforge.evaluate.config import EvalConfig
from lmforge.tasks.builtin import TASKS
from lmforge.tasks.examples import take
from lmforge.train import stage as pretrain
from lmforge.train.config import PretrainConfig

pytestmark = pytest.mark.integration
PLANTED = 10  # per task: the first held-out examples, which an eval with max_examples=10 scores


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """60 clean news articles (XSum's train split) and 20 planted held-out passages: BoolQ's passages (the
    question is not planted) and XSum's articles."""
    root = tmp_path_factory.mktemp("contaminated")
    xsum = TASKS["xsum"].load()
    clean = take(xsum, "train", 60)
    boolq_test, xsum_test = take(TASKS["boolq"].load(), "test", PLANTED), take(xsum, "test", PLANTED)
    rows = [{"id": f"clean-{e.id}", "text": e.prompt.split("\n\n")[1]} for e in clean]
    rows += [{"id": f"planted-{e.id}", "text": e.prompt.split("\nQuestion:")[0]} for e in boolq_test]
    rows += [{"id": f"planted-{e.id}", "text": e.prompt.split("\n\n")[1]} for e in xsum_test]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _prepare(root, out, *extra):
    return prepare.run(cfgmod.load(PrepareConfig, None, [
        f"inputs=[{root / 'corpus.jsonl'}]", f"output={out}", "tokenizer.vocab_size=512", "pack.seq_len=64",
        "dedup.near=false", *extra]))


def _ids(folder) -> dict[str, str]:
    tables = [pq.read_table(p) for p in sorted(folder.glob("*.parquet"))]
    return {r["id"]: r.get("reason", "") for t in tables for r in t.to_pylist()}


def test_prepare_drops_every_planted_test_passage_and_nothing_else(ray_cluster, corpus, tmp_path):
    out = _prepare(corpus, tmp_path / "clean", "decontaminate=[boolq,xsum]")
    rejected = _ids(out / "rejected")
    planted = {i: r for i, r in rejected.items() if i.startswith("planted-")}
    assert len(planted) == 2 * PLANTED
    assert all(r == f"contaminated:{'boolq' if 'boolq' in i else 'xsum'}" for i, r in planted.items()), planted
    kept = _ids(out / "documents")
    assert all(i.startswith("clean-") for i in kept)
    # no clean article dropped as contaminated (BBC Sport's newsletter line, in two test articles and in
    # training ones, is boilerplate, not a test passage); the quality rules may still drop one of them
    clean = {i: r for i, r in rejected.items() if i.startswith("clean-")}
    assert len(kept) + len(clean) == 60 and not any(r.startswith("contaminated") for r in clean.values()), clean


def test_eval_counts_the_test_examples_a_model_was_trained_on(ray_cluster, corpus, tmp_path):
    data = _prepare(corpus, tmp_path / "data")
    model = pretrain.run(cfgmod.load(PretrainConfig, None, [
        f"data={data}", f"output={tmp_path / 'pretrain'}", "model.preset=tiny", "train.num_workers=0",
        "train.max_steps=2", "train.eval_every=2", "train.checkpoint_every=2"]))
    out = evaluation.run(cfgmod.from_dict(EvalConfig, {
        "model": str(model / "model"), "tasks": ["boolq", "xsum", "piqa"], "max_examples": PLANTED,
        "engine": "local", "output": str(tmp_path / "eval"), "bootstrap": 0}))
    scores = json.loads((out / "eval.json").read_text())
    for task, hit in (("boolq", PLANTED), ("xsum", PLANTED), ("piqa", 0)):
        found = scores[task]["contamination"]
        assert found["contaminated"] == hit and found["of"] == PLANTED and found["corpus"] == [str(data)], found
    assert "## contamination" in (out / "report.md").read_text()
