"""Processes the tests start, found and stopped without touching anyone else's.

A process is ours by its session, never by its name: a command started with ``start_new_session=True``
is the leader of a new session, and everything it starts (a ``ray start`` node's GCS, raylet, agents and
workers, the session-wide test cluster's among them; a CLI's own local Ray cluster) keeps that session
id, even after the leader exits or a raylet reparents its workers. A single Ray worker (a training
worker, a Serve replica) is found by asking its cluster which PID it has (Ray's state API), and
signalled only when that PID is in the cluster's session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import psutil


def start(args: list[str], **kw) -> subprocess.Popen:
    """``Popen`` as the leader of a new session: its pid is the session id of all it starts."""
    return subprocess.Popen(args, start_new_session=True, **kw)


def in_session(sid: int) -> list[psutil.Process]:
    """Every live process whose session id is ``sid``."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def stop_session(sid: int, sig: int = signal.SIGTERM, timeout: float = 3.0) -> list[psutil.Process]:
    """Send ``sig`` to every process of session ``sid`` (SIGKILL, as when a machine dies, or SIGTERM then
    SIGKILL for whatever is left after ``timeout``); returns the processes signalled."""
    procs = in_session(sid)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return procs


def discard_sessions(sids: list[int]) -> None:
    """SIGKILL every process of these sessions at once: for a test's own throwaway cluster at teardown,
    whose state goes with its temp dir (a polite SIGTERM costs seconds per node, for nothing)."""
    for sid in sids:
        stop_session(sid, sig=signal.SIGKILL, timeout=10)


def wait_session_gone(sid: int, timeout: float = 30.0) -> list[psutil.Process]:
    """Wait until no process of session ``sid`` is left; returns the ones still there at the deadline."""
    deadline = time.monotonic() + timeout
    while (left := in_session(sid)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


def ray_actors(address: str, sid: int, class_prefix: str = "", job_id: str | None = None) -> list[psutil.Process]:
    """The live actors of the Ray cluster at ``address`` whose class name starts with ``class_prefix`` (and
    of job ``job_id``), by the PIDs Ray reports for them, each of them a process of session ``sid``."""
    from ray.util.state import list_actors

    filters = [("state", "=", "ALIVE")] + ([("job_id", "=", job_id)] if job_id else [])
    found = []
    for actor in list_actors(address=address, filters=filters, limit=10_000, raise_on_missing_output=False):
        if actor.class_name.startswith(class_prefix) and actor.pid:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(actor.pid) == sid:
                    found.append(psutil.Process(actor.pid))
    return found


def started_since(sid: int, since: float) -> list[psutil.Process]:
    """Processes of session ``sid`` created at or after ``since`` (a ``time.time()``): on the session
    cluster, the Ray workers a command started since then (its trials, trainers and their workers)."""
    found = []
    for proc in in_session(sid):
        with contextlib.suppress(psutil.Error):
            if proc.create_time() >= since:
                found.append(proc)
    return found


def kill(processes: list[psutil.Process]) -> None:
    """SIGKILL each of ``processes`` (ours, found by session); one already gone is no error."""
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
