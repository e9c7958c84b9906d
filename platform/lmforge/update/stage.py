"""The ``update`` command's entry (the contract: :mod:`lmforge.stages`): update a live deployment from new
data, behind an evaluation gate, with a rollback.

Run: ``lmforge update jobs/update.yaml data=new.jsonl output=runs/update-2`` (the deployment is running:
``lmforge serve ... serve.detach=true`` on the cluster at ``ray.address``).

Checked before anything trains: the gate names metrics the eval produces; the deployment answers and
its version is known (a version the registry lacks is registered, its export and model read from
``/v1/models``). Then, each step skipped when a rerun finds it done: the new examples minus what any
version was trained on (:mod:`.data`); ``finetune`` from the deployed version's model; ``eval`` of
candidate vs deployed on the same examples; the gate (:mod:`.gate`), recorded in the registry with the
eval (a refusal ends here, the deployment untouched); ``export``; a probe of the live deployment (the
baseline); the rolling switch (:mod:`.switch`); the probe again: a metric worse than the baseline beyond
``probe.max_drop`` (or a probe that fails) switches back to the previous version, recorded as a rollback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lmforge import config as cfgmod
from lmforge.update.config import UpdateConfig as Config
from lmforge.update.registry import Registry

log = logging.getLogger("lmforge.update")

SUMMARY = "update a live deployment from new data: finetune, eval vs deployed, gate, export, switch, probe"
FINAL = ("promoted", "refused", "rolled_back")  # outcomes a rerun returns as they are (until=... ones go on)


def run(cfg: Config) -> dict:
    from lmforge.cluster.session import ray_session
    from lmforge.monitor.probe import served
    from lmforge.update import gate, switch

    gate.check_names(cfg.gate.metrics, produced_metrics(cfg.eval["tasks"]))
    url = switch.endpoint(cfg.serve, cfgmod.to_dict(cfg.ray))
    live = served(url, cfg.api_key_env)  # no deployment there: ConnectionError, before anything trains
    registry, out = Registry(cfg.registry), Path(cfg.output)
    finished = json.loads((out / "update.json").read_text()) if (out / "update.json").is_file() else {}
    if finished.get("outcome") in FINAL:  # a finished update: its outcome, nothing redone
        return finished
    out.mkdir(parents=True, exist_ok=True)
    # the version this update started from, kept: after a crash past the switch the candidate is live
    deployed = _step(out / "deployed.json",
                     lambda: registry.get(live["version"]) or _register(registry, live, cfg.trained_on))
    result: dict = {"deployed": deployed["version"], "model_name": live["model"]}
    seen = [s for v in registry.versions() for s in v.get("data") or []]
    result["data"] = _step(out / "data" / "counts.json", lambda: _dedup(cfg, seen, out / "data"))
    with ray_session(cfg.ray):
        candidate_model = _finetune(cfg, deployed["model"], out)
        scores = _eval(cfg, deployed["model"], candidate_model, out)
        decision = gate.decide(scores["comparisons"]["candidate vs deployed"], cfg.gate.metrics,
                               scores["deployed"], scores["candidate"], cfg.gate.audit_margin)
        result["gate"] = decision
        record = {"model": candidate_model, "data": [str(out / "data" / "train.jsonl")], "parent": deployed["version"],
                  "config": str(out / "update.yaml"), "eval": str(out / "eval"), "gate": decision,
                  "upstream": {"finetune": str(out / "finetune"), "eval": str(out / "eval")}}
        cfgmod.write(cfg, out / "update.yaml")
        if not decision["promote"]:
            why = "; ".join(f"{c['metric']}: {c['why']}" for c in decision["checks"] if not c["passed"])
            _once(registry, "candidate", f"unexported-{_run_id(out / 'finetune')}", reason=f"refused: {why}",
                  **record)
            log.info("update: the gate refused the candidate (%s); %s stays live", why, deployed["version"])
            return _finish(out, {**result, "outcome": "refused", "reason": why}, registry)
        if cfg.until == "gate":
            return _finish(out, {**result, "outcome": "passed the gate (until=gate)"}, registry)
        export_dir = _export(cfg, candidate_model, out)
        version = switch.version_of(export_dir)
        _once(registry, "candidate", version, export=export_dir, **record)
        if cfg.until == "export":
            return _finish(out, {**result, "candidate": version, "outcome": "exported (until=export)"}, registry)
        result.update(candidate=version, outcome=_switch_and_probe(cfg, registry, deployed, version, export_dir,
                                                                    live["model"], out))
    result["probes"] = _probes(out)
    return _finish(out, result, registry)


def _switch_and_probe(cfg: Config, registry: Registry, deployed: dict, version: str, export_dir: str,
                      model_name: str, out: Path) -> str:
    from lmforge.monitor.probe import served
    from lmforge.update import switch

    ray, url = cfgmod.to_dict(cfg.ray), switch.endpoint(cfg.serve, cfgmod.to_dict(cfg.ray))
    if (registry.get(version) or {}).get("status") == "rolled_back":  # a rerun never switches it back on
        return "rolled_back"
    before = _step(out / "probe_before.json", lambda: _probe(cfg, url, out / "probe_before"))
    if served(url, cfg.api_key_env)["version"] != version:
        switch.switch_to(cfg.serve, ray, export_dir, model_name, cfg.api_key_env, cfg.switch_timeout_s)
    if (registry.get(version) or {}).get("status") != "live":
        registry.append("replaced", deployed["version"], reason=f"by {version}")
        registry.append("live", version)
    try:
        after = _probe(cfg, url, out / "probe_after")
        failed = probe_failures(before["metrics"], after["metrics"], cfg.probe.max_drop, cfg.probe.margins)
    except Exception as e:  # a probe that cannot run through the new version fails it
        after, failed = {"error": str(e)}, [f"the probe failed: {e}"]
    (out / "probe_after.json").write_text(json.dumps(after, indent=2))
    if not failed:
        log.info("update: %s is live and its probe passed", version)
        return "promoted"
    why = "; ".join(failed)
    log.warning("update: the probe after the switch failed (%s): rolling back to %s", why, deployed["version"])
    switch.switch_to(cfg.serve, ray, deployed["export"], model_name, cfg.api_key_env, cfg.switch_timeout_s)
    registry.append("rolled_back", version, reason=f"post-switch probe: {why}")
    registry.append("live", deployed["version"], reason=f"rollback from {version}")
    return "rolled_back"


def probe_failures(before: dict, after: dict, max_drop: float, margins: dict) -> list[str]:
    """The probe metrics worse after the switch than before it by more than their margin."""
    from lmforge.update.gate import direction

    failed = []
    for key, old in before.items():
        new = after.get(key)
        margin = margins.get(key, max_drop)
        if new is None:
            failed.append(f"{key}: missing after the switch")
        elif (new - old) * direction(key.split(".", 1)[1]) < -margin:
            failed.append(f"{key}: {old:.4g} -> {new:.4g} (allowed drop {margin})")
    return failed


def produced_metrics(tasks: list) -> set[str]:
    """``task.metric`` of everything an eval of ``tasks`` scores (audits excluded), known before it runs."""
    from lmforge.evaluate.config import DEFAULT_METRICS
    from lmforge.tasks.builtin import TASKS, expand

    out = set()
    for task in expand(tasks):
        if isinstance(task, str):
            if task in TASKS and TASKS[task].kind in ("generate", "choice"):
                out |= {f"{task}.{m}" for m in TASKS[task].metrics}
        elif task.get("name") != "canary":
            metrics = task.get("metrics") or DEFAULT_METRICS["choice" if _is_choice(task) else "generate"]
            out |= {f"{task['name']}.{m}" for m in metrics}
    return out


def _is_choice(task: dict) -> bool:
    from lmforge.tasks.jsonl import read_examples

    return bool(read_examples(task["data"])[0].choices) if task.get("data") else False


def _register(registry: Registry, live: dict, trained_on: list[str]) -> dict:
    """A live version the registry does not know: its export (``/v1/models``' root) and the model that
    export was made from (its config.yaml)."""
    import yaml

    root = Path(live["root"] or "")
    config = root / "config.yaml"
    made_from = yaml.safe_load(config.read_text()).get("model") if config.is_file() else None
    if not made_from:
        raise FileNotFoundError(f"update: the live version {live['version']} ({root}) is no lmforge export with "
                                "a config.yaml naming its model; the candidate cannot start from it")
    registry.append("registered", live["version"], export=str(root), model=made_from, data=list(trained_on),
                    reason="found live")
    return registry.get(live["version"])


def _dedup(cfg: Config, seen: list[str], out: Path) -> dict:
    from lmforge.update.data import new_examples

    counts = new_examples(cfg.data, seen, out)
    if not counts["kept"]:
        raise ValueError(f"data: every one of the {counts['examples']} examples was trained on before; "
                         "nothing to learn")
    log.info("update: new data %s", json.dumps(counts))
    return counts


def _stage(name: str, section: dict):
    """Run a registered stage on its section (it skips itself when a rerun finds it finished)."""
    from lmforge.stages import STAGES

    stage = STAGES[name]
    return stage.run_fn()(cfgmod.from_dict(stage.config_class(), section, name))


def _finetune(cfg: Config, base: str, out: Path) -> str:
    section = {**cfg.finetune, "data": str(out / "data" / "train.jsonl"), "output": str(out / "finetune"),
               "ray": cfgmod.to_dict(cfg.ray)}
    section["model"] = {**(section.get("model") or {}), "init_from": base}
    _stage("finetune", section)
    return str(out / "finetune" / "model")


def _eval(cfg: Config, deployed: str, candidate: str, out: Path) -> dict:
    section = {**cfg.eval, "models": {"deployed": deployed, "candidate": candidate}, "output": str(out / "eval"),
               "ray": cfgmod.to_dict(cfg.ray)}
    section.pop("model", None)
    return json.loads((Path(str(_stage("eval", section))) / "eval.json").read_text())


def _export(cfg: Config, model: str, out: Path) -> str:
    return str(_stage("export", {**cfg.export, "model": model, "output": str(out / "export")}))


def _probe(cfg: Config, url: str, out: Path) -> dict:
    from lmforge.monitor.probe import run_probe

    return run_probe(url, cfg.probe.tasks, out, max_examples=cfg.probe.max_examples, chat=cfg.probe.chat,
                     bootstrap=0, api_key_env=cfg.api_key_env)


def _step(path: Path, make) -> dict:
    """A step's JSON result, made once: a rerun reads what the first run wrote."""
    if path.is_file():
        return json.loads(path.read_text())
    result = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def _once(registry: Registry, event: str, version: str, **fields) -> None:
    if not any(e["event"] == event and e["version"] == version for e in registry.events()):
        registry.append(event, version, **fields)


def _run_id(output: Path) -> str:
    marker = output / ".done"
    return json.loads(marker.read_text())["run"][:12] if marker.is_file() else output.name


def _probes(out: Path) -> dict | None:
    """The probe's figures before and after the switch, when both ran."""
    files = [out / "probe_before.json", out / "probe_after.json"]
    if not all(f.is_file() for f in files):
        return None
    before, after = (json.loads(f.read_text()) for f in files)
    return {"before": before.get("metrics", {}), "after": after.get("metrics", {})}


def _finish(out: Path, result: dict, registry: Registry) -> dict:
    """``update.json`` and ``report.md`` (the outcome, the gate's checks, the probes, the registry)."""
    from lmforge.update import report

    (out / "update.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(report.render(result, registry, str(out)))
    return result
