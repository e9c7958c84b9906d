"""The standard benchmarks, multiple-choice JSONL, few-shot prompts, intervals and endpoint errors, without
Ray: each against what lm-evaluation-harness, sacrebleu or a binomial test says it must be."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import sacrebleu
from transformers import AutoTokenizer

from lmforge import config as cfgmod
from lmforge.evaluate import evaluation, intervals, metrics
from lmforge.evaluate.config import EvalConfig
from lmforge.evaluate.endpoint import EndpointError
from lmforge.evaluate.tasks import Task, encode_pair, requests_for
from lmforge.tasks.benchmarks import STANDARD, parse_options
from lmforge.tasks.builtin import GROUPS, TASKS, expand
from lmforge.tasks.examples import take
from lmforge.tasks.jsonl import DataError, read_examples


def test_options_parse_back_into_choices_and_the_gold_index():
    assert parse_options("A. a marsh\nB. a tundra\n", "A. a marsh") == (["a marsh", "a tundra"], 0)
    assert parse_options("\nA. bank\nB. library\nC. mall", "C. mall") == (["bank", "library", "mall"], 2)
    assert parse_options("A. x\nC. y", "A. x") is None  # a letter missing
    assert parse_options("A. x\nB. y", "D. z") is None  # the answer is not an option


@pytest.mark.parametrize("bench", STANDARD, ids=lambda b: b.name)
def test_each_benchmark_has_lm_evals_prompt_and_a_valid_gold_choice(bench):
    """Held-out rows exist, every gold index points into its choices, and the prompt has lm-eval's shape
    (the full check, against lm-eval itself on SmolLM2, is tests/integration/test_smollm2.py)."""
    every = TASKS[bench.name].load()
    held_out = take(every, "test")
    assert len(held_out) >= 90 and len({e.id for e in every}) == len(every)
    assert all(0 <= e.answer < len(e.choices) and all(c.strip() == c and c for c in e.choices) for e in every)
    ends = {"piqa": "\nAnswer:", "siqa": "\nA:", "commonsense_qa": "\nAnswer:", "mmlu": "\nAnswer:",
            "mmlu_medical": "\nAnswer:", "boolq": "?\nAnswer:"}
    if bench.name in ends:
        assert all(e.prompt.endswith(ends[bench.name]) for e in held_out)
    golds = {e.answer for e in every}
    assert len(golds) == len(every[0].choices)  # every position is gold somewhere: no parse bias to one letter


def test_the_standard_group_expands_in_order_once():
    assert expand(["standard"]) == list(GROUPS["standard"])
    assert expand(["boolq", "standard", "xsum"])[:2] == ["boolq", "piqa"] and expand(["standard", "xsum"])[-1] == "xsum"


def test_encode_pair_splits_the_whole_as_lm_eval_does(hf_dir):
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ctx, cont = encode_pair(tok, "Question: is it? ", "yes")  # the trailing space moves to the answer
    assert ctx == tok("Question: is it?").input_ids and ctx + cont == tok("Question: is it? yes").input_ids
    ctx, cont = encode_pair(tok, "Answer:", " Seoul")
    assert ctx + cont == tok("Answer: Seoul").input_ids and cont


def test_few_shot_examples_come_seeded_from_the_train_split_and_never_the_example_itself(hf_dir):
    spec = "piqa"
    cfg = cfgmod.from_dict(EvalConfig, {"model": "x", "output": "y", "tasks": [spec], "num_fewshot": 3,
                                        "max_examples": 5})
    task = evaluation.load_task(spec, cfg)
    train = {e.id for e in take(TASKS[spec].load(), "train")}
    ex = task.examples[0]
    shots = task.fewshot(ex)
    assert len(shots) == 3 and all(s.id in train for s in shots) and ex.id not in {s.id for s in shots}
    assert task.fewshot(ex) == shots  # seeded: the same shots again, whatever else was drawn before
    text = task.context(ex)
    assert text.count("\nAnswer:") == 4 and text.endswith(ex.prompt)
    assert f"{shots[0].prompt} {shots[0].target()}\n\n" in text  # prompt, delimiter, gold answer, blank line
    zero = evaluation.load_task(spec, cfgmod.from_dict(EvalConfig, {"model": "x", "output": "y", "tasks": [spec]}))
    assert zero.context(ex) == ex.prompt


def test_a_task_can_have_its_own_number_of_examples(tmp_path):
    """`{name: bias, max_examples: 3}` (a built-in task without data) scores 3 examples while the others take
    eval's max_examples; a JSONL task's own limit too; a canary audit without its prepare output is refused
    with the reason (not `unknown task`)."""
    from lmforge.config import ConfigError

    rows = tmp_path / "qa.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "reference": "a"}) + "\n" for i in range(10)))
    cfg = cfgmod.from_dict(EvalConfig, {"model": "x", "output": "y", "max_examples": 5, "tasks": [
        "nq_open", {"name": "bias", "max_examples": 3}, {"name": "qa", "data": str(rows), "max_examples": 2}]})
    assert [len(evaluation.load_task(t, cfg).examples) for t in cfg.tasks] == [5, 3, 2]
    assert evaluation.load_task(cfg.tasks[1], cfg).kind == "bias"
    with pytest.raises(ConfigError, match="canary audit reads the secrets"):
        cfgmod.from_dict(EvalConfig, {"model": "x", "output": "y", "tasks": [{"name": "canary"}]})
    with pytest.raises(ConfigError, match="unknown task 'nq'"):
        evaluation.load_task(cfgmod.from_dict(EvalConfig, {"model": "x", "output": "y", "tasks": [{"name": "nq"}]})
                             .tasks[0], cfg)


def test_multiple_choice_jsonl_rows_and_the_rows_that_are_refused(tmp_path, hf_dir):
    good = tmp_path / "mc.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "The capital of Korea is", "choices": ["Seoul", "Busan"], "answer": 0},
        {"prompt": "2 + 2 =", "choices": ["3", "4", "5"], "answer": "4"},
        {"messages": [{"role": "user", "content": "Pick one"}], "choices": ["a", "b"], "answer": 1}]) + "\n")
    rows = read_examples(str(good))
    assert [r.answer for r in rows] == [0, 1, 1] and rows[2].messages
    task = Task("mc", "choice", ("acc",), rows)
    reqs = requests_for(task, AutoTokenizer.from_pretrained(hf_dir))
    assert len(reqs) == 7 and all(r["cont"] for r in reqs)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "choices": ["a", "b"], "answer": "c"}) + "\n"
                   + json.dumps({"prompt": "p", "choices": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(DataError, match=r"line 1: \"answer\" 'c' is not among.*line 2: \"answer\" 2 is not an index"):
        read_examples(str(bad))


def test_bootstrap_intervals_cover_the_estimate_and_are_seeded():
    rng = np.random.default_rng(0)
    acc = intervals.Sample.mean(rng.random(200) < 0.6)
    low, high = intervals.interval(acc, 1000, seed=1)
    assert low < acc.values.mean() < high and 0.1 < high - low < 0.2  # ~2 x 1.96 x sqrt(.24/200)
    assert intervals.interval(acc, 1000, seed=1) == [low, high]
    assert intervals.interval(intervals.Sample.mean([1.0]), 1000) is None  # one example: no interval


def test_corpus_bleu_from_per_sentence_statistics_is_sacrebleus_own():
    preds = ["The cat sat on the mat.", "It rained all day in Seoul", "Dogs bark."]
    refs = [["A cat was sitting on the mat."], ["It rained in Seoul all day."], ["Dogs bark loudly."]]
    stats, from_stats = metrics.sacrebleu_stats(preds, refs)["bleu"]
    sample = intervals.Sample.of_stats(stats, from_stats)
    want = sacrebleu.corpus_bleu(preds, [[r[0] for r in refs]]).score
    assert sample.at(np.arange(3)[None, :])[0] == pytest.approx(want)


def test_paired_differences_mcnemar_and_bootstrap():
    base = intervals.Sample.mean([0.0] * 10 + [1.0] * 40)
    better = intervals.Sample.mean([1.0] * 10 + [1.0] * 40)  # right on the 10 the base got wrong
    c = intervals.paired(base, better, 1000, seed=0)
    assert c["difference"] == pytest.approx(0.2) and c["test"] == "mcnemar"
    assert c["p_value"] == pytest.approx(2 / 2**10) and c["ci95"][0] > 0  # 10 discordant pairs, all one way
    as_percent = intervals.paired(intervals.Sample.mean(base.values * 100), intervals.Sample.mean(better.values * 100))
    assert as_percent["test"] == "mcnemar" and as_percent["p_value"] == c["p_value"]  # exact match is 0/100
    same = intervals.paired(base, base, 1000)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    rouge_a = intervals.Sample.mean(np.linspace(10, 30, 40))
    rouge_b = intervals.Sample.mean(np.linspace(10, 30, 40) + np.random.default_rng(0).normal(0, 0.1, 40))
    assert intervals.paired(rouge_a, rouge_b, 1000)["p_value"] > 0.05  # noise is not a difference


def test_two_models_side_by_side_get_intervals_and_a_paired_comparison(hf_dir, tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Item {i} is", "choices": ["red", "blue"], "answer": i % 2}) + "\n"
                            for i in range(12)))
    out = evaluation.run(cfgmod.from_dict(EvalConfig, {
        "models": {"base": str(hf_dir), "again": str(hf_dir)}, "engine": "local", "output": str(tmp_path / "eval"),
        "tasks": [{"name": "mc", "data": str(data)}, "piqa"], "max_examples": 12, "bootstrap": 200}))
    body = json.loads((out / "eval.json").read_text())
    assert set(body) == {"base", "again", "comparisons"}
    for task in ("mc", "piqa"):
        scores = body["base"][task]
        assert set(scores["ci95"]) == {"acc", "acc_norm"} and scores["ci95"]["acc"][0] <= scores["acc"]
        same = body["comparisons"]["again vs base"][task]["acc"]
        assert same["difference"] == 0 and same["p_value"] == 1.0  # the same model: no difference
    assert "again vs base" in (out / "report.md").read_text()


class _NoLogprobs(BaseHTTPRequestHandler):
    """An OpenAI-shaped server whose completions carry no logprobs."""

    def _send(self, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):  # noqa: N802
        self._send({"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send({"id": "c", "object": "text_completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "text": " blue", "finish_reason": "length", "logprobs": None}]})

    def log_message(self, *args):
        pass


def test_an_endpoint_that_is_down_or_returns_no_logprobs_fails_before_any_work(hf_dir, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    base = {"tokenizer": str(hf_dir), "tasks": ["piqa"], "max_examples": 2, "retries": 0,
            "output": str(tmp_path / "eval")}
    down = f"http://127.0.0.1:{free_port}/v1"
    with pytest.raises(EndpointError, match=f"{down}: not reachable"):
        evaluation.run(cfgmod.from_dict(EvalConfig, {**base, "model": down}))
    httpd = HTTPServer(("127.0.0.1", 0), _NoLogprobs)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}/v1"
    try:
        with pytest.raises(EndpointError, match=f"{url}: .*returned no prompt logprobs"):
            evaluation.run(cfgmod.from_dict(EvalConfig, {**base, "model": url}))
        assert not (tmp_path / "eval").exists()
        with pytest.raises(cfgmod.ConfigError, match="tokenizer"):
            evaluation.run(cfgmod.from_dict(EvalConfig, {**base, "model": url, "tokenizer": None}))
    finally:
        httpd.shutdown()
