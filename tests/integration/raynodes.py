"""Ray nodes started (and stopped) by the tests themselves with ``ray start``, each in a temp dir of its
own, on free ports and in a session of its own (:mod:`tests.integration.procs`), and the ``lmforge`` CLI
run as a user runs it. Only processes started here are ever stopped: ``ray stop`` would stop every Ray
on the machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration import procs
from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def start_ray(args: list[str], env: dict, timeout: float = 120) -> int:
    """``ray start ARGS`` in a new session; returns the session id every process of that node keeps."""
    proc = procs.start([RAY, "start", *args, *_ports(), "--disable-usage-stats"], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        procs.stop_session(proc.pid)
        raise RuntimeError(f"ray start failed ({proc.returncode}):\n{out[-3000:]}")
    return proc.pid


def start_node(head: str, env: dict, temp: str, *resources: str) -> int:
    """``ray start --address`` a worker node with its own temp dir and free ports; returns its session id."""
    return start_ray([f"--address={head}", *resources, "--temp-dir", temp], env)


def _ports() -> list[str]:
    """Every port a node listens on, free ones: the session's own Ray cluster holds Ray's defaults."""
    return [f"--{name}={free_port()}" for name in ("node-manager-port", "object-manager-port", "metrics-export-port",
                                                   "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                   "runtime-env-agent-port")]


def lmforge(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
