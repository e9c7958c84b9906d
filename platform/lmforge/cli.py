"""The ``lmforge`` command: ``lmforge <stage> [CONFIG.yaml] [dotted.key=value ...] [--dry-run] [--help]``.

The stages come from the registry (:mod:`lmforge.stages`), the benchmarks from :mod:`lmforge.bench`.
``--help`` prints every key of the stage's config; ``--dry-run`` prints the resolved config and exits.
A bad key or value exits with status 2 and a message naming the key (and the nearest valid ones).
"""

from __future__ import annotations

import difflib
import json
import sys

from lmforge import __version__
from lmforge import config as cfgmod
from lmforge.stages import STAGES, Stage, load
from lmforge.tasks.jsonl import DataError

FLAGS = ("--dry-run", "--help")


def usage() -> str:
    from lmforge.bench import BENCHES

    width = max(len(name) for name in STAGES) + 2
    lines = ["usage: lmforge <stage> [CONFIG.yaml] [dotted.key=value ...] [--dry-run] [--help]", "", "stages:"]
    lines += [f"  {name:<{width}}{stage.summary}" for name, stage in STAGES.items()]
    lines += [f"  {'bench':<{width}}benchmarks, JSON out: lmforge bench {'|'.join(BENCHES)}",
              f"  {'submit':<{width}}a stage as a job on a Ray cluster: lmforge submit <stage> CONFIG [--address URL]",
              f"  {'jobs':<{width}}lmforge jobs list | logs ID [--follow] | stop ID",
              f"  {'cluster':<{width}}lmforge cluster up|down|status --cloud aws|gcp|azure (ray up, token auth)", "",
              "Override values are parsed as YAML: pack.seq_len=256  inputs=[a.jsonl,b.jsonl]",
              "Ray: ray.address=... or RAY_ADDRESS; none starts a local cluster for the command.",
              "`lmforge <stage> --help` lists every key of a stage with its type, default and meaning."]
    return "\n".join(lines)


def force_to_overrides(args: list[str]) -> list[str] | int:
    """``lmforge run RECIPE --force STAGE``: that stage's ``force=true``; the stages after it re-run too,
    as their finished outputs were made from the run it replaces."""
    out, forced, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--force" or arg.startswith("--force="):
            name = arg.partition("=")[2] or (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if "=" in arg else 2
            if name not in STAGES or "force" not in STAGES[name].config_class().__dataclass_fields__:
                print(f"lmforge run: --force takes a stage that writes an output, not {name!r}", file=sys.stderr)
                return 2
            forced.append(f"{name}.force=true")
            continue
        out.append(arg)
        i += 1
    return out + forced  # after the config path, wherever the flag was


def _find(argv: list[str]) -> tuple[str, Stage, list[str]] | int:
    """The command name, its registry entry and its arguments; or an exit status after an error."""
    if argv[0] == "bench":
        from lmforge.bench import BENCHES

        if len(argv) < 2 or argv[1] not in BENCHES:
            print(f"lmforge bench: name one of {', '.join(BENCHES)}", file=sys.stderr)
            return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
        return f"bench {argv[1]}", BENCHES[argv[1]], argv[2:]
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
    if argv[0] in ("submit", "jobs", "cluster"):
        from lmforge.cluster import jobs

        return jobs.main(argv)
    found = _find(argv)
    if isinstance(found, int):
        return found
    command, stage, args = found
    if command == "run":
        args = force_to_overrides(args)
        if isinstance(args, int):
            return args
    path, overrides, flags = cfgmod.split_args(args)
    for flag in flags:
        if flag not in (*FLAGS, "-h"):
            close = difflib.get_close_matches(flag, FLAGS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (options: {', '.join(FLAGS)})"
            print(f"lmforge {command}: unknown option {flag}{hint}", file=sys.stderr)
            return 2
    if "--help" in flags or "-h" in flags:
        from lmforge.help import render

        print(render(stage.config_class(), command, stage.summary))
        return 0
    return _run(command, stage, path, overrides, "--dry-run" in flags)


def _run(command: str, stage: Stage, path: str | None, overrides: list[str], dry_run: bool) -> int:
    from lmforge.stage import setup_logging

    try:
        cfg = cfgmod.load(stage.config_class(), path, overrides)
        if dry_run:
            shown = load(stage.dry_run)(cfg) if stage.dry_run else cfg
            print(cfgmod.dump(shown), end="")
            return 0
        setup_logging()
        result = stage.run_fn()(cfg)
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
