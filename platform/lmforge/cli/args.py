"""A stage's command line, ``<stage> [CONFIG.yaml] [dotted.key=value ...] [--dry-run] [--help]`` (and a
recipe's ``--force STAGE``), parsed one way for ``lmforge <stage>`` and ``lmforge submit <stage>``."""

from __future__ import annotations

import dataclasses
import difflib
import sys

from lmforge.stages import STAGES

FLAGS = ("--dry-run", "--help", "-h")


@dataclasses.dataclass
class StageArgs:
    path: str | None  # the config file
    overrides: list[str]  # dotted.key=value, --force STAGE turned into STAGE.force=true
    dry_run: bool
    help: bool


def parse(command: str, args: list[str]) -> StageArgs | int:
    """The arguments of ``lmforge <command>``; or, after a message on stderr, the exit status (2)."""
    if command == "run":
        args = force_to_overrides(args)
        if isinstance(args, int):
            return args
    path, overrides, flags = split_args(args)
    for flag in flags:
        if flag not in FLAGS:
            close = difflib.get_close_matches(flag, FLAGS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (options: {', '.join(FLAGS[:2])})"
            print(f"lmforge {command}: unknown option {flag}{hint}", file=sys.stderr)
            return 2
    return StageArgs(path, overrides, "--dry-run" in flags, "--help" in flags or "-h" in flags)


def split_args(args: list[str]) -> tuple[str | None, list[str], list[str]]:
    """A command line's ``[CONFIG.yaml] [dotted.key=value ...] [--flag ...]`` -> (config path or None,
    overrides, flags): what ``lmforge <stage>`` and ``lmforge submit <stage>`` both take."""
    flags = [a for a in args if a.startswith("-")]
    rest = [a for a in args if not a.startswith("-")]
    path = rest[0] if rest and "=" not in rest[0] else None
    return path, rest[1:] if path else rest, flags


def force_to_overrides(args: list[str]) -> list[str] | int:
    """``lmforge run RECIPE --force STAGE``: that stage's ``force=true``; the stages after it re-run too,
    as their finished outputs were made from the run it replaces."""
    out, forced, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--force" or arg.startswith("--force="):
            name = arg.partition("=")[2] or (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if "=" in arg else 2
            if name not in STAGES or not STAGES[name].writes_output():
                print(f"lmforge run: --force takes a stage that writes an output, not {name!r}", file=sys.stderr)
                return 2
            forced.append(f"{name}.force=true")
            continue
        out.append(arg)
        i += 1
    return out + forced  # after the config path, wherever the flag was


def help_text(command: str, entry) -> str:
    from lmforge.help import render

    return render(entry.config_class(), command, entry.summary)


def resolved(entry, cfg):
    """What ``--dry-run`` prints: the config, or the stage's own view of it resolved (a recipe's every
    section, a sweep's base), which checks everything that can be checked before a run."""
    dry_run = entry.hook("dry_run")
    return dry_run(cfg) if dry_run else cfg
