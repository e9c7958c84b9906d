"""``lmforge run RECIPE.yaml``: chain stages (prepare -> pretrain -> export -> serve) in one Ray session.

A recipe names an ``output`` root and one section per stage. Paths between stages are wired by
default (``<output>/data`` -> ``<output>/train`` -> ``<output>/onnx``) and can be overridden like any
key: ``lmforge run jobs/quickstart.yaml pretrain.train.max_steps=50``. Every stage config is resolved
and validated before the first stage starts. With ``prompts`` set, the recipe ends by serving the
model, printing its completions of those prompts over HTTP, and shutting the server down.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Literal

from lmforge import config as cfgmod
from lmforge.cluster.session import RayConfig, ray_session
from lmforge.config import check

log = logging.getLogger(__name__)

Stage = Literal["prepare", "pretrain", "export", "serve"]


@dataclasses.dataclass(kw_only=True)
class RecipeConfig:
    output: str  # root dir; each stage writes a sub-dir unless its section says otherwise
    stages: list[Stage] = dataclasses.field(default_factory=lambda: ["prepare", "pretrain", "export", "serve"])
    prepare: dict = dataclasses.field(default_factory=dict)
    pretrain: dict = dataclasses.field(default_factory=dict)
    export: dict = dataclasses.field(default_factory=dict)
    serve: dict = dataclasses.field(default_factory=dict)
    prompts: list[str] = dataclasses.field(default_factory=list)  # completed after `serve`
    max_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0  # sampled completions are reproducible
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    def __post_init__(self):
        check(len(self.stages) > 0, "stages", "needs at least one stage")
        check(self.max_tokens >= 1, "max_tokens", "must be >= 1")


@dataclasses.dataclass
class ResolvedRecipe:
    prepare: object | None
    pretrain: object | None
    export: object | None
    serve: object | None


def resolve(recipe: RecipeConfig) -> ResolvedRecipe:
    """Typed, validated config of every stage, with paths wired from stage to stage."""
    from lmforge.data.config import PrepareConfig
    from lmforge.export.config import ExportConfig
    from lmforge.serve.config import ServeConfig
    from lmforge.train.config import PretrainConfig

    root = Path(recipe.output)
    ray = cfgmod.to_dict(recipe.ray)
    data = {"output": str(root / "data"), **recipe.prepare, "ray": ray}
    train = {"data": data["output"], "output": str(root / "train"), **recipe.pretrain, "ray": ray}
    export = {"model": str(Path(train["output"]) / "model"), "output": str(root / "onnx"), **recipe.export}
    serve = {"model": export["output"], **recipe.serve, "ray": ray}
    wanted = set(recipe.stages)
    return ResolvedRecipe(
        prepare=cfgmod.from_dict(PrepareConfig, data, "prepare") if "prepare" in wanted else None,
        pretrain=cfgmod.from_dict(PretrainConfig, train, "pretrain") if "pretrain" in wanted else None,
        export=cfgmod.from_dict(ExportConfig, export, "export") if "export" in wanted else None,
        serve=cfgmod.from_dict(ServeConfig, serve, "serve") if "serve" in wanted else None,
    )


def run(recipe: RecipeConfig) -> dict:
    """Run the recipe's stages in order; returns ``{"outputs": ..., "completions": ...}``."""
    stages = resolve(recipe)
    cfgmod.write(recipe, recipe.output)
    result: dict = {"outputs": {}, "completions": [], "seconds": {}}
    with ray_session(recipe.ray):
        for name in ("prepare", "pretrain", "export"):
            cfg = getattr(stages, name)
            if cfg is not None:
                start = time.perf_counter()
                result["outputs"][name] = str(_stage_fn(name)(cfg))
                result["seconds"][name] = round(time.perf_counter() - start, 1)
        if stages.serve is not None:
            start = time.perf_counter()
            result["completions"] = _serve_prompts(stages.serve, recipe)
            result["seconds"]["serve"] = round(time.perf_counter() - start, 1)
    return result


def _stage_fn(name: str):
    if name == "prepare":
        from lmforge.data.prepare import run
    elif name == "pretrain":
        from lmforge.train.pretrain import run
    else:
        from lmforge.export.onnx_export import run
    return run


def _serve_prompts(cfg, recipe: RecipeConfig) -> list[dict]:
    """Start the server, complete each prompt over HTTP, print it, and shut the server down."""
    from lmforge.serve import server

    url = server.start(cfg)
    key = cfg.serve.api_keys[0] if cfg.serve.api_keys else None
    out = []
    try:
        for prompt in recipe.prompts:
            resp = server.complete(url, prompt, recipe.max_tokens, recipe.temperature, recipe.top_p, recipe.seed,
                                   api_key=key)
            text = resp["choices"][0]["text"]
            out.append({"prompt": prompt, "completion": text})
            print(f"\n>>> {prompt}\n{prompt}{text}", flush=True)
    finally:
        server.stop()
    return out
