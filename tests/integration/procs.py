"""Processes the tests start, found and stopped without touching anyone else's.

A process is ours by its session, never by its name: a command started with ``start_new_session=True``
is the leader of a new session, and everything it starts (a ``ray start`` node's GCS, raylet, agents and
workers, the session-wide test cluster's among them; a CLI's own local Ray cluster) keeps that session
id, even after the leader exits or a raylet reparents its workers.
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


def in_session_matching(sid: int, marker: str, since: float = 0.0) -> list[psutil.Process]:
    """Processes of session ``sid`` whose command line holds ``marker`` (a Ray worker's title, such as
    ``RayTrainWorker`` or ``ray::``), created at or after ``since`` (a ``time.time()``)."""
    found = []
    for proc in in_session(sid):
        with contextlib.suppress(psutil.Error):
            if proc.create_time() >= since and marker in " ".join(proc.cmdline()):
                found.append(proc)
    return found


def kill(processes: list[psutil.Process]) -> None:
    """SIGKILL each of ``processes`` (ours, found by session); one already gone is no error."""
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
