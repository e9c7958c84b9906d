"""The package's import graph, built from the source: no cycle, and no arrow that climbs back up.

Every ``import lmforge...`` (at the top of a module or inside a function: both run) is an arrow. A
package may import its own modules and those of packages in lower layers only, so that a stage's code
never depends on a stage built on it, and the layers read bottom-up as the lifecycle is built.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "lmforge"

LAYERS = [  # lowest first; the top-level modules of lmforge (config, storage, ...) are each their own unit
    {"lmforge", "config", "aws", "storage", "uploads", "progress", "stages", "outputs", "report", "help"},  # shared
    {"cluster", "tasks", "generate", "model"},  # Ray sessions, task data, the ONNX generator; import (model)
    {"data"},  # prepare, and the data tools the stages above read with
    {"train"},  # pretrain, and the shared training worker every stage that trains runs on
    {"finetune", "evaluate", "export", "serve"},  # stages built on the ones below
    {"distill", "monitor"},  # distill renders fine-tuning data as finetune does; monitor probes through eval
    {"tune"},  # sweeps any stage that trains
    {"recipe", "update"},  # run stages in order (update: over a live deployment, with its monitor's probe)
    {"bench"},  # measures the stages from outside
    {"cli"},  # the command line
    {"__main__"},  # python -m lmforge
]
FOUNDATION = 0  # units of the lowest layer may import one another (the graph has no cycle still)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["lmforge", *path.relative_to(PACKAGE).with_suffix("").parts]
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: the lmforge modules it imports}`` (a name imported from a package counts as its module
    when it is one, else as the package)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in names:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lmforge"


def layer(module: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit(module) in units)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def climbing(graph: dict[str, set[str]]) -> list[str]:
    """Arrows from a unit to one of its own layer or above (the foundation's units aside)."""
    bad = []
    for source, targets in graph.items():
        for target in targets:
            if unit(source) == unit(target):
                continue
            if layer(target) > layer(source) or (layer(target) == layer(source) != FOUNDATION):
                bad.append(f"{source} -> {target}")
    return sorted(bad)


def test_every_package_has_a_layer():
    assert not [m for m in modules() if not any(unit(m) in units for units in LAYERS)]


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_no_arrow_climbs_back_up():
    assert climbing(import_graph()) == []


def test_the_checks_catch_what_they_look_for():
    """The checks themselves: a planted cycle and a planted upward arrow are found."""
    graph = {"lmforge.train.worker": {"lmforge.finetune.stage"}, "lmforge.finetune.stage": {"lmforge.train.worker"}}
    assert cycles(graph) == [["lmforge.finetune.stage", "lmforge.train.worker"]]
    assert climbing(graph) == ["lmforge.train.worker -> lmforge.finetune.stage"]
    sideways = {"lmforge.serve.app": {"lmforge.evaluate.tasks"}}  # a stage package into another of its layer
    assert climbing(sideways) == ["lmforge.serve.app -> lmforge.evaluate.tasks"]
    assert climbing({"lmforge.outputs": {"lmforge.stages"}, "lmforge.stages": set()}) == []
