"""Config of ``lmforge update`` and ``lmforge models``."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lmforge.config import check
from lmforge.evaluate.config import TaskSpec
from lmforge.stages import UsesRay


@dataclasses.dataclass(kw_only=True)
class GateConfig:
    # "task.metric" -> how much worse than the deployed model the candidate may be (in the metric's units,
    # e.g. F1 points or accuracy share), judged on the 95% interval of the paired difference
    metrics: dict[str, float]
    audit_margin: float = 0.02  # bias: distance from no preference; canaries: x10 bits of mean exposure

    def __post_init__(self):
        check(len(self.metrics) > 0, "gate.metrics", "name at least one task.metric to gate on")
        for key, margin in self.metrics.items():
            check("." in key, "gate.metrics", f"{key!r}: write task.metric, e.g. nq_open.f1")
            check(margin >= 0, "gate.metrics", f"{key}: a margin must be >= 0")


@dataclasses.dataclass(kw_only=True)
class ProbeConfig:
    """The probe after the switch (and once before it, as the baseline), through the live endpoint."""

    tasks: list[str | TaskSpec]  # as `lmforge monitor` / `lmforge eval` take them
    max_examples: int = 50  # per task, the same examples before and after the switch
    chat: bool = False  # prompts as a user turn of the model's chat template
    # how much worse than the probe before the switch (the previous version) any probe metric may be after
    # it before the switch is rolled back (in the metric's units; lower is better for perplexity)
    max_drop: float = 0.1
    margins: dict[str, float] = dataclasses.field(default_factory=dict)  # per task.metric, instead of max_drop


@dataclasses.dataclass(kw_only=True)
class UpdateConfig(UsesRay):
    """output: data/ (the new examples, deduplicated), finetune/, eval/, export/, probe_before/, probe_after/,
    update.json (every step's outcome), report.md (with the registry); the registry gets the candidate, the
    gate's decision and the switch."""

    registry: str  # the model registry, a JSONL file (local or s3://): `lmforge models list registry=...`
    output: str  # the update's work dir; a rerun resumes at the first unfinished step
    # new fine-tuning data (JSONL or built-in tasks, as `lmforge finetune` takes it); examples the deployed
    # version (or any version in the registry) was trained on are dropped first
    data: str | list[str]
    # `lmforge serve` keys of the live deployment (its `serve:` options: port, api keys, replicas ...);
    # `model` is set to each version in turn; serve.model_name defaults to the name served now
    serve: dict
    # the deployed version's training data, when the registry does not know the version (its first update)
    trained_on: list[str] = dataclasses.field(default_factory=list)
    # `lmforge finetune` keys (finetune.method, train ...); data, model.init_from and output are set here
    finetune: dict = dataclasses.field(default_factory=dict)
    eval: dict = dataclasses.field(default_factory=dict)  # `lmforge eval` keys (tasks ...); models, output set here
    gate: GateConfig
    export: dict = dataclasses.field(default_factory=dict)  # `lmforge export` keys; model, output set here
    probe: ProbeConfig
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the deployment's API key
    switch_timeout_s: float = 300.0  # how long the new version may take to be the one /v1/models reports
    # stop after this step (gate: the decision; export: the candidate ready to switch, for review); a rerun
    # without it goes on from there
    until: Literal["gate", "export"] | None = None

    def __post_init__(self):
        check(bool(self.eval.get("tasks")), "eval.tasks", "name the tasks the candidate is judged on")


@dataclasses.dataclass(kw_only=True)
class ModelsConfig:
    registry: str  # the model registry (a JSONL file, local or s3://)
    version: str | None = None  # show: this version (default: the live one)


@dataclasses.dataclass(kw_only=True)
class RollbackConfig(UsesRay):
    registry: str  # the model registry (a JSONL file, local or s3://)
    serve: dict  # `lmforge serve` keys of the live deployment, as `lmforge update` takes them
    version: str | None = None  # the version to bring back; default: the one live before the current
    api_key_env: str = "OPENAI_API_KEY"
    switch_timeout_s: float = 300.0
