"""``lmforge submit``, ``lmforge jobs`` and ``lmforge cluster``: lmforge's stages as Ray jobs on a cluster.

``submit`` takes a stage's arguments as ``lmforge <stage>`` does (:mod:`.args`: ``--force STAGE`` of a
recipe, ``--dry-run``, ``--help`` mean the same) and checks the config here first (a bad key exits 2
before anything is sent), then submits ``python -m lmforge <stage> CONFIG [overrides]`` through Ray's
Jobs API with a runtime env that carries this project: the current directory as the job's working dir
(recipes and configs under it resolve as they do here) and the ``lmforge`` package itself on every
worker's path, so the cluster runs the code that was checked. It streams the job's logs and exits with
its status (0 when it succeeded).

Token auth: the token comes from ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or Ray's
default ``~/.ray/auth_token``; with one present, requests carry it (``RAY_AUTH_MODE=token``).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from lmforge import aws
from lmforge import config as cfgmod
from lmforge.cli.args import StageArgs, help_text, parse, resolved
from lmforge.stages import STAGES

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # the dashboard (Jobs API) of a local head, or a forwarded one
# Ray leaves out .git and .venv by itself; these are outputs and caches, never inputs of a job
EXCLUDES = ["runs", "**/__pycache__", "*.onnx", "*.safetensors", ".pytest_cache", ".ruff_cache", ".hypothesis"]
STARTUP_S = 60  # a head that has just started answers "No available agent" for a few seconds
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
CLUSTER_FILES = {"aws": "cluster.yaml", "gcp": "infra/gcp.yaml", "azure": "infra/azure.yaml"}


class SubmitError(RuntimeError):
    """The cluster could not be reached, or refused the request (its message says what to do)."""


def token_source() -> str | None:
    """Where the auth token comes from, or None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return path if Path(path).is_file() else None


def client(address: str | None):
    """A JobSubmissionClient for ``address`` (else RAY_ADDRESS if it is an http URL, else the local
    dashboard), sending the token when there is one."""
    address = address or (os.environ.get("RAY_ADDRESS") if "://" in os.environ.get("RAY_ADDRESS", "") else None) \
        or DEFAULT_ADDRESS
    if token_source():
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when Ray builds the request headers
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # ConnectionError, or the auth failure Ray reports as a RuntimeError
        raise SubmitError(_explain(address, e)) from None


def _explain(address: str, error: Exception) -> str:
    text = str(error)
    if "401" in text or "Authentication required" in text:
        return (f"{address} requires a token and none was sent: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or "
                f"put it in ~/.ray/auth_token; `ray get-auth-token` on the head prints it)")
    if "403" in text or "Authentication failed" in text:
        return f"{address} refused the token from {token_source()}: it is not this cluster's token"
    return f"cannot reach the Ray Jobs API at {address}: {text.splitlines()[0] if text else type(error).__name__}"


def entrypoint(command: str, config: str | None, overrides: list[str]) -> str:
    """The job's command line; the config path relative to the working dir that travels with the job."""
    args = ["python", "-m", "lmforge", command]
    if config:
        path = Path(config).resolve()
        try:
            args.append(str(path.relative_to(Path.cwd().resolve())))
        except ValueError:
            raise SubmitError(f"{config}: the config must be inside the current directory, which travels with "
                              f"the job as its working dir") from None
    return shlex.join(args + overrides)


def runtime_env() -> dict:
    """This directory as the job's working dir and this lmforge package on every worker's path."""
    import lmforge

    return {"working_dir": str(Path.cwd()), "excludes": EXCLUDES,
            "py_modules": [str(Path(lmforge.__file__).parent)],
            # (not the variables every stage's ray.init sets itself: Ray refuses a job env that repeats them)
            "env_vars": aws.aws_env()}


def submit(command: str, args: StageArgs, address: str | None, wait: bool) -> int:
    stage = STAGES[command]
    # a bad config never reaches the cluster: a recipe's sections (a sweep's base) too, each checked by
    # its stage's config class
    shown = resolved(stage, cfgmod.load(stage.config_class(), args.path, args.overrides))
    if args.dry_run:
        print(cfgmod.dump(shown), end="")
        return 0
    config, overrides = args.path, args.overrides
    jobs = client(address)
    logging.getLogger("ray").setLevel(logging.ERROR)  # not a line per file packed into the working dir
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            job_id = jobs.submit_job(entrypoint=entrypoint(command, config, overrides), runtime_env=runtime_env(),
                                     metadata={"lmforge_stage": command})
            break
        except RuntimeError as e:
            if "No available agent" in str(e) and time.monotonic() < deadline:
                time.sleep(2.0)
                continue
            raise SubmitError(_explain(jobs.get_address(), e)) from None
    print(f"lmforge submit: job {job_id} on {jobs.get_address()} "
          f"(lmforge jobs logs {job_id}; lmforge jobs stop {job_id})", file=sys.stderr)
    if not wait:
        print(job_id)
        return 0
    return follow(jobs, job_id)


def follow(jobs, job_id: str) -> int:
    """Print the job's log as it grows; exit status 0 when it succeeded, 1 otherwise."""
    shown = 0
    while True:
        status = jobs.get_job_status(job_id).value  # a JobStatus (a str enum)
        logs = jobs.get_job_logs(job_id)
        sys.stdout.write(logs[shown:])
        sys.stdout.flush()
        shown = len(logs)
        if status in TERMINAL:
            info = jobs.get_job_info(job_id)
            print(f"lmforge submit: job {job_id} {status}{': ' + info.message if info.message else ''}",
                  file=sys.stderr)
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(1.0)


def jobs_command(action: str, job_id: str | None, address: str | None, follow_logs: bool) -> int:
    jobs = client(address)
    if action == "list":
        rows = sorted(jobs.list_jobs(), key=lambda j: j.start_time or 0)
        for j in rows:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
            print(f"{j.submission_id or j.job_id}\t{j.status}\t{started}\t{j.entrypoint}")
        return 0
    if not job_id:
        raise SubmitError(f"lmforge jobs {action}: name the job (lmforge jobs list shows them)")
    if action == "logs":
        if follow_logs:
            return follow(jobs, job_id)
        print(jobs.get_job_logs(job_id), end="")
        return 0
    stopped = jobs.stop_job(job_id)
    print(f"job {job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def cluster_command(action: str, cloud: str, extra: list[str]) -> int:
    """``ray up|down|status`` on the cloud's cluster file, with token auth on."""
    path = CLUSTER_FILES[cloud]
    if not Path(path).is_file():
        raise SubmitError(f"{path}: run lmforge cluster from the project's root (where {path} is)")
    cmd = {"up": ["ray", "up", "-y", path], "down": ["ray", "down", "-y", path],
           "status": ["ray", "exec", path, "ray status"]}[action] + extra
    print(f"lmforge cluster: {shlex.join(cmd)}", file=sys.stderr)
    return subprocess.call(cmd, env={**os.environ, "RAY_AUTH_MODE": "token"})


SUBMIT_USAGE = """usage: lmforge submit [--address URL] [--no-wait] <stage | RECIPE.yaml> [CONFIG.yaml] [key=value ...]
                      [--force STAGE] [--dry-run] [--help]

A stage (or a recipe: run, or its YAML itself) as a job on a Ray cluster, with the arguments it takes
locally. --address: the cluster's Jobs API (default: $RAY_ADDRESS, else {address});
--no-wait: print the job id and return at once."""


def split_submit(argv: list[str]) -> tuple[str | None, bool, list[str]]:
    """``submit``'s own options (``--address URL``, ``--no-wait``), wherever they are, and the rest."""
    address, wait, rest, i = None, True, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--address" and i + 1 < len(argv):
            address, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--address="):
            address = arg.partition("=")[2]
        elif arg == "--no-wait":
            wait = False
        else:
            rest.append(arg)
        i += 1
    return address, wait, rest


def submit_main(argv: list[str]) -> int:
    """``lmforge submit ...``: the stage's arguments parsed as ``lmforge <stage>`` parses them."""
    address, wait, rest = split_submit(argv)
    if not rest or rest[0] in ("-h", "--help"):
        print(SUBMIT_USAGE.format(address=DEFAULT_ADDRESS), file=sys.stdout if rest else sys.stderr)
        return 0 if rest else 2
    command, args = rest[0], rest[1:]
    if command.endswith((".yaml", ".yml")):  # `lmforge submit jobs/quickstart.yaml`: a recipe
        command, args = "run", [command, *args]
    if command not in STAGES:
        close = difflib.get_close_matches(command, list(STAGES), n=1)
        hint = f"did you mean {close[0]}?" if close else f"stages: {', '.join(STAGES)}"
        print(f"lmforge submit: unknown stage {command!r} ({hint})", file=sys.stderr)
        return 2
    parsed = parse(command, args)
    if isinstance(parsed, int):
        return parsed
    if parsed.help:
        print(help_text(command, STAGES[command]))
        return 0
    return submit(command, parsed, address, wait)


def main(argv: list[str]) -> int:
    """``lmforge submit|jobs|cluster ...``"""
    try:
        if argv[0] == "submit":
            return submit_main(argv[1:])
        parser = argparse.ArgumentParser(prog=f"lmforge {argv[0]}")
        if argv[0] == "jobs":
            parser.add_argument("action", choices=["list", "logs", "stop"])
            parser.add_argument("job_id", nargs="?")
            parser.add_argument("--address")
            parser.add_argument("--follow", action="store_true", help="logs: follow until the job ends")
            ns = parser.parse_args(argv[1:])
            return jobs_command(ns.action, ns.job_id, ns.address, ns.follow)
        parser.add_argument("action", choices=["up", "down", "status"])
        parser.add_argument("--cloud", choices=list(CLUSTER_FILES), default="aws")
        ns, extra = parser.parse_known_args(argv[1:])
        return cluster_command(ns.action, ns.cloud, extra)
    except cfgmod.ConfigError as e:
        print(f"lmforge {argv[0]}: config error: {e}", file=sys.stderr)
        return 2
    except SubmitError as e:
        print(f"lmforge {argv[0]}: {e}", file=sys.stderr)
        return 2
