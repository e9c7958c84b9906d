"""``lmforge submit``, ``lmforge jobs`` and ``lmforge cluster``: lmforge's stages as Ray jobs on a cluster.

``submit`` checks the config here first (a bad key exits 2 before anything is sent), then submits
``python -m lmforge <stage> CONFIG [overrides]`` through Ray's Jobs API with a runtime env that carries
this project: the current directory as the job's working dir (recipes and configs under it resolve as
they do here) and the ``lmforge`` package itself on every worker's path, so the cluster runs the code
that was checked. It streams the job's logs and exits with its status (0 when it succeeded).

Token auth: the token comes from ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or Ray's
default ``~/.ray/auth_token``; with one present, requests carry it (``RAY_AUTH_MODE=token``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from lmforge import config as cfgmod
from lmforge import storage

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
            "env_vars": storage.aws_env()}


def submit(command: str, config: str | None, overrides: list[str], address: str | None, wait: bool) -> int:
    from lmforge.stages import STAGES

    loaded = cfgmod.load(STAGES[command].config_class(), config, overrides)  # a bad config never reaches
    if command == "run":  # the cluster: a recipe's sections too, each checked by its stage's config class
        from lmforge.recipe.runner import resolve

        resolve(loaded)
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


def main(argv: list[str]) -> int:
    """``lmforge submit|jobs|cluster ...``"""
    parser = argparse.ArgumentParser(prog=f"lmforge {argv[0]}")
    if argv[0] == "submit":
        parser.add_argument("stage", help="a stage (lmforge --help lists them), or run (a recipe), or the recipe's "
                            "YAML itself")
        parser.add_argument("args", nargs="*", help="CONFIG.yaml and dotted.key=value overrides, as for the stage")
        parser.add_argument("--address", help=f"the cluster's Jobs API (default: $RAY_ADDRESS, else {DEFAULT_ADDRESS})")
        parser.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    elif argv[0] == "jobs":
        parser.add_argument("action", choices=["list", "logs", "stop"])
        parser.add_argument("job_id", nargs="?")
        parser.add_argument("--address")
        parser.add_argument("--follow", action="store_true", help="logs: follow until the job ends")
    else:
        parser.add_argument("action", choices=["up", "down", "status"])
        parser.add_argument("--cloud", choices=list(CLUSTER_FILES), default="aws")
    ns, extra = parser.parse_known_args(argv[1:])
    try:
        if argv[0] == "submit":
            from lmforge.stages import STAGES

            if ns.stage.endswith((".yaml", ".yml")):  # `lmforge submit jobs/quickstart.yaml`: a recipe
                ns.stage, ns.args = "run", [ns.stage, *ns.args]
            if ns.stage not in STAGES:
                parser.error(f"unknown stage {ns.stage!r} (stages: {', '.join(STAGES)})")
            config, overrides, _ = cfgmod.split_args(ns.args)
            return submit(ns.stage, config, overrides, ns.address, wait=not ns.no_wait)
        if argv[0] == "jobs":
            return jobs_command(ns.action, ns.job_id, ns.address, ns.follow)
        return cluster_command(ns.action, ns.cloud, extra)
    except cfgmod.ConfigError as e:
        print(f"lmforge {argv[0]}: config error: {e}", file=sys.stderr)
        return 2
    except SubmitError as e:
        print(f"lmforge {argv[0]}: {e}", file=sys.stderr)
        return 2
