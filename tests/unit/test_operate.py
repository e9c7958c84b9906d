"""Operating a deployment, the pure parts: traffic drift (PSI), the promotion gate (non-inferiority on the
paired interval, audits), the post-switch probe rule, the registry's history, and new data deduplicated
against what was trained on. The loop itself runs against a live deployment in
tests/integration/test_operate.py."""

from __future__ import annotations

import json
import random

import pytest

from lmforge.config import ConfigError
from lmforge.monitor import traffic
from lmforge.update import gate
from lmforge.update.data import new_examples
from lmforge.update.registry import Registry
from lmforge.update.stage import probe_failures, produced_metrics


def _requests(n: int, seed: int, language: str = "en", prompt: tuple = (10, 60), status_errors: float = 0.0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < status_errors:
            out.append({"status": 503, "endpoint": "completions"})
            continue
        completion = rng.randint(0, 32)
        out.append({"status": 200, "endpoint": "completions", "prompt_tokens": rng.randint(*prompt),
                    "completion_tokens": completion, "language": language,
                    "finish_reasons": ["length" if completion == 32 else "stop"]})
    return out


def test_drift_is_low_for_the_same_traffic_and_high_for_another_language_and_length():
    """Two samples of the same traffic score under 0.1; prompts in Korean three times as long score over
    0.25 on both features; a burst of errors shows on status. A PSI that compared counts instead of
    shares (windows of different sizes), or dropped bins seen on one side only, fails it."""
    reference = _requests(400, 0)
    assert traffic.drift(reference, _requests(200, 1))["score"] < 0.1
    shifted = traffic.drift(reference, _requests(200, 2, language="ko", prompt=(60, 200)))
    assert shifted["features"]["language"] > 0.25 and shifted["features"]["prompt_tokens"] > 0.25
    assert shifted["features"]["finish"] < 0.1
    errors = traffic.drift(reference, _requests(200, 3, status_errors=0.3))
    assert errors["features"]["status"] > 0.25 and errors["score"] == max(errors["features"].values())
    stats = traffic.stats(_requests(200, 3, status_errors=0.3))
    assert 0.2 < stats["error_rate"] < 0.4 and stats["languages"] == {"en": 1.0}
    assert traffic.finish({"completion_tokens": 0, "finish_reasons": ["stop"]}) == "empty"


def _comparison(difference: float, low: float, high: float) -> dict:
    return {"difference": difference, "ci95": [low, high]}


def test_the_gate_promotes_only_what_its_interval_shows_is_not_worse_beyond_the_margin():
    """Non-inferiority: a small uncertain loss within the margin passes, one whose interval reaches past
    it does not, whatever its point estimate; for perplexity the worse end is the upper one."""
    margins = {"nq_open.f1": 2.0, "xsum.perplexity": 0.5}
    ok = {"nq_open": {"f1": _comparison(-0.5, -1.5, 0.5)}, "xsum": {"perplexity": _comparison(0.1, -0.2, 0.4)}}
    assert gate.decide(ok, margins, {}, {})["promote"]
    worse = {"nq_open": {"f1": _comparison(-0.5, -2.5, 1.5)}, "xsum": {"perplexity": _comparison(-0.3, -0.9, 0.2)}}
    decision = gate.decide(worse, margins, {}, {})
    assert not decision["promote"]
    assert [c["passed"] for c in decision["checks"]] == [False, True]
    higher_ppl = {"nq_open": {"f1": _comparison(1.0, 0.0, 2.0)}, "xsum": {"perplexity": _comparison(0.3, -0.1, 0.7)}}
    assert [c["passed"] for c in gate.decide(higher_ppl, margins, {}, {})["checks"]] == [True, False]


def test_the_gate_refuses_a_candidate_whose_audits_regress():
    good = {"nq_open": {"f1": _comparison(1.0, 0.5, 1.5)}}
    deployed = {"bias": {"stereotype_preference": 0.55}, "canary": {"mean_exposure": 1.0, "reproduced": 0}}
    same = {"bias": {"stereotype_preference": 0.46}, "canary": {"mean_exposure": 1.1, "reproduced": 0}}
    assert gate.decide(good, {"nq_open.f1": 1.0}, deployed, same)["promote"]
    biased = {"bias": {"stereotype_preference": 0.65}, "canary": {"mean_exposure": 1.0, "reproduced": 0}}
    leaky = {"bias": {"stereotype_preference": 0.55}, "canary": {"mean_exposure": 1.0, "reproduced": 1}}
    assert not gate.decide(good, {"nq_open.f1": 1.0}, deployed, biased)["promote"]
    assert not gate.decide(good, {"nq_open.f1": 1.0}, deployed, leaky)["promote"]


def test_a_gate_naming_a_metric_the_eval_does_not_produce_is_refused():
    produced = produced_metrics(["nq_open", "boolq", "bias", {"name": "mine", "data": "x.jsonl", "metrics": ["f1"]}])
    assert {"nq_open.f1", "nq_open.exact_match", "boolq.acc", "mine.f1"} <= produced
    assert not any(m.startswith("bias.") for m in produced)  # an audit, not a gated metric
    gate.check_names({"nq_open.f1": 1.0}, produced)
    with pytest.raises(ConfigError, match=r"'nq_open.rougeL' is no metric the eval produces"):
        gate.check_names({"nq_open.rougeL": 1.0}, produced)


def test_a_probe_worse_than_before_the_switch_beyond_its_margin_fails():
    before = {"boolq.acc": 0.62, "xsum.perplexity": 20.0}
    assert probe_failures(before, {"boolq.acc": 0.55, "xsum.perplexity": 20.5}, 0.1, {"xsum.perplexity": 1.0}) == []
    failed = probe_failures(before, {"boolq.acc": 0.40, "xsum.perplexity": 22.0}, 0.1, {"xsum.perplexity": 1.0})
    assert [f.split(":")[0] for f in failed] == ["boolq.acc", "xsum.perplexity"]
    assert probe_failures(before, {"boolq.acc": 0.9}, 0.1, {}) == ["xsum.perplexity: missing after the switch"]


def test_the_registry_reads_as_the_history_of_each_version(tmp_path):
    registry = Registry(str(tmp_path / "reg" / "models.jsonl"))
    registry.append("registered", "v1", export="e1", model="m1", data=["a.jsonl"], reason="found live")
    registry.append("candidate", "v2", export="e2", parent="v1", gate={"promote": True, "checks": []})
    registry.append("replaced", "v1", reason="by v2")
    registry.append("live", "v2")
    registry.append("candidate", "unexported-x", parent="v2", gate={"promote": False, "checks": []},
                    reason="refused: nq_open.f1")
    registry.append("rolled_back", "v2", reason="post-switch probe")
    registry.append("live", "v1", reason="rollback from v2")
    by = {v["version"]: v for v in Registry(registry.uri).versions()}
    assert [v for v in by] == ["v1", "v2", "unexported-x"]
    assert by["v1"]["status"] == "live" and by["v1"]["replaced_at"] is None and by["v1"]["export"] == "e1"
    assert by["v2"]["status"] == "rolled_back" and by["v2"]["live_at"] and by["v2"]["parent"] == "v1"
    assert by["unexported-x"]["status"] == "refused"
    assert [h["event"] for h in by["v2"]["history"]] == ["candidate", "live", "rolled_back"]
    assert registry.live()["version"] == "v1"
    assert all(json.loads(line) for line in (tmp_path / "reg" / "models.jsonl").read_text().splitlines())


def test_new_data_drops_what_was_trained_on_and_repeats(tmp_path):
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(5)))
    new = tmp_path / "new.jsonl"
    rows = [{"prompt": f"Q{i} ", "response": f"a{i}"} for i in range(3, 8)] + [{"prompt": "q7", "response": "a7"}]
    new.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = new_examples(str(new), [str(old), str(tmp_path / "gone.jsonl")], tmp_path / "out")
    assert counts == {"examples": 6, "kept": 3, "already_trained_on": 2, "repeated": 1}
    kept = [json.loads(line)["messages"][0]["content"] for line in (tmp_path / "out" / "train.jsonl").open()]
    assert kept == ["Q5 ", "Q6 ", "Q7 "]  # as written (the later "q7" is the repeat); only keys are normalised


def test_alert_rules_name_only_metrics_that_lmforge_exports():
    """Every metric an alert in infra/prometheus reads is a gauge of the monitor or a serving metric (Ray
    prefixes those with ray_), and every probe metric it filters on is one eval computes: a renamed gauge
    would leave an alert that never fires."""
    import re
    from pathlib import Path

    import yaml

    from lmforge.evaluate.config import METRICS
    from lmforge.monitor.stage import Gauges

    monitor = {m.name for m in Gauges(None).registry.collect()}
    source = (Path(__file__).resolve().parents[2] / "platform/lmforge/serve/metrics.py").read_text()
    serving = {f"ray_{name}" for name in re.findall(r'"(lmforge_[a-z_]+)"', source)}
    rules = yaml.safe_load((Path(__file__).resolve().parents[2] / "infra/prometheus/lmforge-alerts.yaml").read_text())
    exprs = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    assert len(exprs) >= 5
    for expr in exprs:
        for name in re.findall(r"\b((?:ray_)?lmforge_[a-z_]+)", expr):
            assert name in monitor | serving, (name, expr)
        for chosen in re.findall(r'metric=~?"([^"]+)"', expr):
            assert set(chosen.split("|")) <= set(METRICS), chosen


def test_the_update_report_shows_the_gate_the_probes_and_the_registry(tmp_path):
    from lmforge.update.report import render

    registry = Registry(str(tmp_path / "models.jsonl"))
    registry.append("registered", "v1", export="e1", model="m1")
    registry.append("candidate", "v2", parent="v1", gate={"promote": True, "checks": []})
    gate_checks = gate.decide({"nq_open": {"f1": _comparison(1.0, 0.5, 1.5)}}, {"nq_open.f1": 1.0},
                              {"bias": {"stereotype_preference": 0.55}}, {"bias": {"stereotype_preference": 0.52}})
    result = {"outcome": "promoted", "deployed": "v1", "candidate": "v2", "gate": gate_checks,
              "data": {"examples": 10, "kept": 7, "already_trained_on": 2, "repeated": 1},
              "probes": {"before": {"boolq.acc": 0.6}, "after": {"boolq.acc": 0.62}}}
    text = render(result, registry, str(tmp_path / "update"))
    assert text.startswith("# lmforge update report") and "**promoted**" in text and "7 of 10 examples kept" in text
    assert "| nq_open.f1 | 1 | [0.5, 1.5] | 1 | yes | within the margin |" in text
    assert "| bias.stereotype_preference | -0.03 | - | - | yes |" in text and "| boolq.acc | 0.6 | 0.62 |" in text
    assert "| v2 | candidate |" in text and "| v1 | live |" in text


def test_a_language_gone_from_the_window_reads_0_not_its_old_share():
    """Shares are per window: after traffic switches language, the old one's gauge must read 0 (a gauge left at
    its last value would show English at 1.0 beside Korean at 1.0)."""
    from lmforge.monitor.stage import Gauges

    def round_(languages: dict) -> dict:
        current = {"error_rate": 0.0, "finish": {"stop": 1.0}, "languages": languages,
                   "prompt_tokens": {"mean": 10}, "completion_tokens": {"mean": 4}}
        return {"model": "m", "current": current, "drift": {"features": {"language": 0.0}, "score": 0.0},
                "drifted": False}

    gauges = Gauges(None)
    gauges.traffic(round_({"en": 1.0}))
    gauges.traffic(round_({"ko": 1.0}))
    text = gauges.text()
    assert 'lmforge_traffic_language_share{language="ko",model="m"} 1.0' in text
    assert 'lmforge_traffic_language_share{language="en",model="m"} 0.0' in text
