"""Evaluation without Ray: metrics against the libraries they come from, scoring against PyTorch, tasks."""

import json

import numpy as np
import pytest
import sacrebleu
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.data.canaries import Canary
from lmforge.evaluate import metrics
from lmforge.evaluate.backends import OnnxBackend, TorchBackend
from lmforge.evaluate.tasks import Task, execute, requests_for, score
from lmforge.tasks.examples import Example

PREDICTIONS = ["The cat sat on the mat.", "It rained all day in Seoul", "서울은 한국의 수도이다."]
REFERENCES = [["A cat was sitting on the mat."], ["It rained in Seoul all day."], ["서울은 대한민국의 수도이다."]]


def test_bleu_and_chrf_are_sacrebleus_own():
    ours = metrics.sacrebleu_scores(PREDICTIONS, REFERENCES)
    assert ours["bleu"] == sacrebleu.corpus_bleu(PREDICTIONS, [[r[0] for r in REFERENCES]]).score
    assert ours["chrf"] == sacrebleu.corpus_chrf(PREDICTIONS, [[r[0] for r in REFERENCES]]).score
    korean = metrics.sacrebleu_scores(PREDICTIONS[2:], REFERENCES[2:], korean_target=True)
    assert korean["bleu"] == sacrebleu.corpus_bleu(PREDICTIONS[2:], [[REFERENCES[2][0]]], tokenize="char").score


def test_rouge_keeps_hangul_where_the_default_tokenizer_drops_it():
    from rouge_score import rouge_scorer

    good = metrics.rouge(["서울은 대한민국의 수도이며 큰 도시이다"], [["서울은 대한민국의 수도이다"]])
    assert good["rougeL"] == pytest.approx(50.0)  # LCS 2 words: P 2/5, R 2/3
    default = rouge_scorer.RougeScorer(["rougeL"]).score("서울은 대한민국의 수도이다",
                                                          "서울은 대한민국의 수도이며 큰 도시이다")
    assert default["rougeL"].fmeasure == 0.0  # why our tokenizer exists
    assert metrics.rouge(["완전히 다른 문장"], [["서울은 수도이다"]])["rougeL"] == 0.0


def test_squad_exact_match_and_token_f1():
    assert metrics.exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert metrics.token_f1("tower in Paris", ["Eiffel Tower"]) == pytest.approx(0.4)
    assert metrics.qa_scores(["Paris", "Rome"], [["paris", "Paris, France"], ["Milan"]]) == {"exact_match": 50.0,
                                                                                          "f1": 50.0}


def test_intervals_and_exposure():
    low, high = metrics.wilson_interval(50, 100)
    assert low < 0.5 < high and high - low == pytest.approx(0.19, abs=0.01)
    assert metrics.wilson_interval(0, 10)[0] == 0.0
    assert metrics.exposure(1, 1024) == 10.0 and metrics.exposure(1024, 1024) == 0.0


@pytest.fixture(scope="module")
def backends(hf_dir, onnx_dir):
    return {"torch": TorchBackend(str(hf_dir)), "onnx": OnnxBackend(str(onnx_dir))}


def test_loglikelihood_equals_pytorch_on_both_backends(backends, hf_dir):
    tok = AutoTokenizer.from_pretrained(hf_dir)
    requests = [(tok("The river").input_ids, tok(" flows south", add_special_tokens=False).input_ids),
                (tok("서울은").input_ids, tok(" 대한민국의 수도", add_special_tokens=False).input_ids)]
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    want = []
    for ctx, cont in requests:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), -1)
        want.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
    for name, backend in backends.items():
        got = [lp for lp, _ in backend.loglikelihood(requests, batch_size=2)]  # batched: left padding too
        assert np.allclose(got, want, atol=1e-3), name


def test_tasks_score_end_to_end_on_a_model(backends, hf_dir):
    tok = AutoTokenizer.from_pretrained(hf_dir)
    tasks = [
        Task("qa", "generate", ("exact_match", "f1", "rougeL", "perplexity"),
             [Example(id="1", prompt="The river", reference="flows"),
              Example(id="2", prompt="서울은", reference="수도")],
             max_tokens=4),
        Task("choice", "choice", ("acc", "acc_norm", "f1"),
             [Example(id="1", prompt="Is it?", choices=["yes", "no"], answer=0)]),
        Task("bias", "bias", (), [Example(id="c", category="crows/x", pair=("He is a doctor.", "She is a doctor.")),
                                  Example(id="s", category="stereoset/y", context="A nurse.",
                                          pair=(" She cares.", " He cares."), choices=[" Cats fly."])]),
        Task("canary", "canary", (), [], canaries=[Canary("c1", "phone", "My phone number for onyx-1 is",
                                                          "010-1234-5678")]),
    ]
    requests = [r for t in tasks for r in requests_for(t, tok)]
    results = {name: execute(backend, requests, batch_size=4) for name, backend in backends.items()}
    for task in tasks:
        scores, rows, _ = score(task, results["onnx"])
        again, torch_rows, _ = score(task, results["torch"])
        if task.kind == "generate":  # the same greedy text from both (batched, left-padded); perplexity to float
            assert [r["prediction"] for r in rows] == [r["prediction"] for r in torch_rows]
            assert scores.pop("perplexity") == pytest.approx(again.pop("perplexity"), rel=1e-4)
        if task.kind != "canary":
            assert json.dumps(scores, sort_keys=True) == json.dumps(again, sort_keys=True), task.name
        assert rows
    qa, _, _ = score(tasks[0], results["onnx"])
    assert qa["examples"] == 2 and qa["perplexity"] > 1
    bias, _, _ = score(tasks[2], results["onnx"])
    assert set(bias["by_category"]) == {"crows/x", "stereoset/y"} and "stereoset_language_model_score" in bias
    canary, rows, _ = score(tasks[3], results["onnx"])
    assert canary["canaries"] == 1 and 1 <= rows[0]["rank"] <= 101 and canary["reproduced"] == 0


def _help_tree(root):
    """Two paragraphs of LibreOffice help, aligned by page and paragraph id as the Debian packages have them."""
    pages = {"ko": ["이 명령은 현재 문서를 복원하는 데 필요한 정보를 저장합니다.",
                    "입력한 URL로 지정된 문서를 로드합니다."],
             "en-US": ["This command saves the information needed to restore the current document.",
                       "Loads the document specified by the URL that you enter."]}
    for lang, texts in pages.items():
        page = root / lang / "text" / "shared" / "page.html"
        page.parent.mkdir(parents=True)
        page.write_text("<html><body>" + "".join(f'<p id="par_{i}">{t}</p>' for i, t in enumerate(texts))
                        + "</body></html>", encoding="utf-8")
    return root


def test_the_built_in_tasks_through_the_eval_stage(hf_dir, tmp_path, monkeypatch):
    """boolq, xsum, chat and both translation directions from their packaged (or Debian-installed)
    sources, through ``lmforge eval`` as a user runs it: each task scored with its own metrics on its
    examples, each example in predictions.jsonl with its prompt and reference."""
    from lmforge import config as cfgmod
    from lmforge.evaluate import evaluation
    from lmforge.evaluate.config import EvalConfig
    from lmforge.tasks.builtin import TASKS

    monkeypatch.setenv("LMFORGE_LIBREOFFICE_HELP", str(_help_tree(tmp_path / "help")))
    names = ["boolq", "xsum", "chat", "translate_ko_en", "translate_en_ko"]
    out = evaluation.run(cfgmod.from_dict(EvalConfig, {"model": str(hf_dir), "output": str(tmp_path / "eval"),
                                                       "engine": "local", "max_examples": 2, "tasks": names,
                                                       "split": "all"}))
    scores = json.loads((out / "eval.json").read_text())
    assert set(scores) == set(names)
    for name in names:
        assert set(TASKS[name].metrics) <= set(scores[name]) and scores[name]["examples"] == 2, (name, scores[name])
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    by_task = {name: [r for r in rows if r["task"] == name] for name in names}
    assert all(len(by_task[n]) == 2 and all(r["prompt"] and r["reference"] for r in by_task[n]) for n in names)
    assert {r["reference"] for r in by_task["boolq"]} <= {"yes", "no"}
    assert all("shared/page" in r["id"] for r in by_task["translate_en_ko"])  # pairs from the help tree
    assert all(any("\uac00" <= c <= "\ud7a3" for c in r["reference"]) for r in by_task["translate_en_ko"])
    assert all(any("\uac00" <= c <= "\ud7a3" for c in r["prompt"]) for r in by_task["translate_ko_en"])
