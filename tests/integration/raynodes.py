"""Ray nodes started (and stopped) by the tests themselves with ``ray start``, each in a temp dir of its
own and on free ports, and the ``lmforge`` CLI run as a user runs it. Only processes started here are ever
stopped: ``ray stop`` would stop every Ray on the machine."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def start_node(head: str, env: dict, temp: str, *resources: str) -> None:
    """``ray start --address`` a worker node with its own temp dir and free ports."""
    subprocess.run([RAY, "start", f"--address={head}", *resources, *_ports(), "--temp-dir", temp], env=env,
                   check=True, capture_output=True)


def stop_node_processes(markers: list[str], sig: str = "terminate") -> list:
    """Stop every process whose command line holds one of ``markers`` (a node's temp dir, the head's GCS
    address), and every process they started: agents outlive a killed raylet otherwise, holding their
    ports. ``sig="kill"`` SIGKILLs at once, as when a machine dies. Returns the processes."""
    import psutil

    procs = []
    for pid in {pid for marker in markers for pid in _pids_matching(marker)}:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            getattr(proc, sig)()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return procs


def _ports() -> list[str]:
    """Every port a node listens on, free ones: the session's own Ray cluster holds Ray's defaults."""
    return [f"--{name}={free_port()}" for name in ("node-manager-port", "object-manager-port", "metrics-export-port",
                                                   "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                   "runtime-env-agent-port")]


def _pids_matching(text: str) -> list[int]:
    """Processes whose command line holds ``text`` (the nodes' temp dir, or the head's GCS address)."""
    out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def lmforge(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
