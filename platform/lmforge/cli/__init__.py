"""The ``lmforge`` command: ``lmforge <stage> [CONFIG.yaml] [dotted.key=value ...] [--dry-run] [--help]``.

The stages come from the registry (:mod:`lmforge.stages`), the benchmarks from :mod:`lmforge.bench`;
``submit``, ``jobs`` and ``cluster`` run them on a Ray cluster (:mod:`.submit`), with the same arguments
(:mod:`.args`). ``--help`` prints every key of the stage's config; ``--dry-run`` prints the resolved
config and exits. A bad key or value exits with status 2 and a message naming the key (and the nearest
valid ones).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys

from lmforge import __version__
from lmforge import config as cfgmod
from lmforge.cli.args import StageArgs, help_text, parse, resolved
from lmforge.stages import STAGES
from lmforge.tasks.jsonl import DataError

REMOTE = ("submit", "jobs", "cluster")


def usage() -> str:
    from lmforge.bench import BENCHES

    width = max(len(name) for name in STAGES) + 2
    lines = ["usage: lmforge <stage> [CONFIG.yaml] [dotted.key=value ...] [--dry-run] [--help]", "", "stages:"]
    lines += [f"  {name:<{width}}{stage.summary}" for name, stage in STAGES.items()]
    lines += [f"  {'bench':<{width}}benchmarks, JSON out: lmforge bench {'|'.join(BENCHES)}",
              f"  {'submit':<{width}}a stage as a job on a Ray cluster: lmforge submit <stage> CONFIG [--address URL]",
              f"  {'models':<{width}}the model registry: lmforge models list | show | rollback registry=...",
              f"  {'jobs':<{width}}lmforge jobs list | logs ID [--follow] | stop ID",
              f"  {'cluster':<{width}}lmforge cluster up|down|status --cloud aws|gcp|azure (ray up, token auth)", "",
              "Override values are parsed as YAML: pack.seq_len=256  inputs=[a.jsonl,b.jsonl]",
              "Ray: ray.address=... or RAY_ADDRESS; none starts a local cluster for the command.",
              "`lmforge <stage> --help` lists every key of a stage with its type, default and meaning."]
    return "\n".join(lines)


def setup_logging(level: int = logging.INFO) -> None:
    """One plain log format for every command (idempotent); no per-file progress bars from the Hugging
    Face libraries (set before they are imported, and inherited by the Ray workers started after)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    root = logging.getLogger("lmforge")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def find(argv: list[str]):
    """The command name and its registry entry (a stage or a bench), and its arguments; or an exit status
    after an error."""
    if argv[0] == "bench":
        from lmforge.bench import BENCHES

        if len(argv) < 2 or argv[1] not in BENCHES:
            print(f"lmforge bench: name one of {', '.join(BENCHES)}", file=sys.stderr)
            return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
        return f"bench {argv[1]}", BENCHES[argv[1]], argv[2:]
    if argv[0] == "models":
        from lmforge.update import MODELS

        if len(argv) < 2 or argv[1] not in MODELS:
            print(f"lmforge models: name one of {', '.join(MODELS)}", file=sys.stderr)
            return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
        return f"models {argv[1]}", MODELS[argv[1]], argv[2:]
    if argv[0] not in STAGES:
        close = difflib.get_close_matches(argv[0], list(STAGES), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        print(f"lmforge: unknown stage {argv[0]!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    return argv[0], STAGES[argv[0]], argv[1:]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    if argv[0] in REMOTE:
        from lmforge.cli import submit

        return submit.main(argv)
    found = find(argv)
    if isinstance(found, int):
        return found
    command, entry, args = found
    parsed = parse(command, args)
    if isinstance(parsed, int):
        return parsed
    if parsed.help:
        print(help_text(command, entry))
        return 0
    return _run(command, entry, parsed)


def _run(command: str, entry, parsed: StageArgs) -> int:
    try:
        cfg = cfgmod.load(entry.config_class(), parsed.path, parsed.overrides)
        if parsed.dry_run:
            print(cfgmod.dump(resolved(entry, cfg)), end="")
            return 0
        setup_logging()
        result = entry.run_fn()(cfg)
    except cfgmod.ConfigError as e:
        print(f"lmforge {command}: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, DataError) as e:
        print(f"lmforge {command}: {e}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
