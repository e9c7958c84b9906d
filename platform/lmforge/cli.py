"""The ``lmforge`` command: ``lmforge <stage> [CONFIG.yaml] [dotted.key=value ...]``.

Stages: prepare, pretrain, export, serve, run (a recipe of several). ``--dry-run`` prints the resolved
config and exits. A bad key or value exits with status 2 and a message naming the key.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from lmforge import __version__
from lmforge import config as cfgmod
from lmforge.stage import setup_logging

USAGE = """usage: lmforge <stage> [CONFIG.yaml] [dotted.key=value ...] [--dry-run]

stages:
  prepare    corpus files -> cleaned documents, BPE tokenizer, packed train/val shards
  pretrain   train a Llama-style model on prepared shards with Ray Train
  import     an HF dir or .gguf file -> HF model dir (source=... output=...)
  export     HF model dir -> ONNX with KV cache (fp32 or quantize=int8), parity-checked
  serve      OpenAI-compatible HTTP API on Ray Serve (foreground until Ctrl-C)
  run        a recipe chaining the stages (e.g. jobs/quickstart.yaml)
  bench      benchmarks, JSON out: `lmforge bench prepare|train|generate|kernels`

Override values are parsed as YAML: pack.seq_len=256  inputs=[a.jsonl,b.jsonl]
Ray: ray.address=... or RAY_ADDRESS; none starts a local cluster for the command.
"""


def _stages() -> dict[str, tuple[type, Callable]]:
    """Stage name -> (config class, run function); imports stay lazy so --help is instant."""
    from lmforge.data.config import PrepareConfig
    from lmforge.export.config import ExportConfig
    from lmforge.model.importer import ImportConfig
    from lmforge.recipe import RecipeConfig
    from lmforge.serve.config import ServeConfig
    from lmforge.train.config import PretrainConfig

    def lazy(module: str, fn: str = "run") -> Callable:
        def call(cfg):
            import importlib

            return getattr(importlib.import_module(module), fn)(cfg)

        return call

    return {
        "prepare": (PrepareConfig, lazy("lmforge.data.prepare")),
        "pretrain": (PretrainConfig, lazy("lmforge.train.pretrain")),
        "export": (ExportConfig, lazy("lmforge.export.onnx_export")),
        "import": (ImportConfig, lazy("lmforge.model.importer")),
        "serve": (ServeConfig, lazy("lmforge.serve.server")),
        "run": (RecipeConfig, lazy("lmforge.recipe")),
    }


def _benches() -> dict[str, tuple[type, Callable]]:
    from lmforge.bench.generate_bench import GenerateBenchConfig
    from lmforge.bench.generate_bench import run as generate_bench
    from lmforge.bench.kernel_bench import KernelBenchConfig
    from lmforge.bench.kernel_bench import run as kernel_bench
    from lmforge.bench.prepare_bench import PrepareBenchConfig
    from lmforge.bench.prepare_bench import run as prepare_bench
    from lmforge.bench.train_bench import TrainBenchConfig
    from lmforge.bench.train_bench import run as train_bench

    return {"prepare": (PrepareBenchConfig, prepare_bench), "train": (TrainBenchConfig, train_bench),
            "generate": (GenerateBenchConfig, generate_bench), "kernels": (KernelBenchConfig, kernel_bench)}


def split_args(args: list[str]) -> tuple[str | None, list[str], set[str]]:
    """-> (config path or None, overrides, flags)."""
    flags = {a for a in args if a.startswith("--")}
    rest = [a for a in args if not a.startswith("--")]
    path = rest[0] if rest and "=" not in rest[0] else None
    return path, rest[1:] if path else rest, flags


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    if argv[0] == "bench":
        benches = _benches()
        if len(argv) < 2 or argv[1] not in benches:
            print(f"lmforge bench: name one of {', '.join(benches)}", file=sys.stderr)
            return 2
        argv = [f"bench {argv[1]}", *argv[2:]]
        stages = {argv[0]: benches[argv[0].split()[1]]}
    else:
        stages = _stages()
    stage_name, (path, overrides, flags) = argv[0], split_args(argv[1:])
    if stage_name not in stages:
        print(f"lmforge: unknown stage {stage_name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    cls, fn = stages[stage_name]
    try:
        cfg = cfgmod.load(cls, path, overrides)
        if "--dry-run" in flags:
            print(cfgmod.dump(cfg), end="")
            return 0
        if stage_name == "run":
            from lmforge.recipe import resolve

            resolve(cfg)  # validate every stage's keys before starting anything
        setup_logging()
        result = fn(cfg)
    except cfgmod.ConfigError as e:
        print(f"lmforge {stage_name}: config error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"lmforge {stage_name}: {e}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
