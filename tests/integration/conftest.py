"""Integration fixtures: one real local Ray cluster for the whole test session."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest


@dataclass
class SessionCluster:
    address: str  # the GCS address (what ray.address= and RAY_ADDRESS take)
    sid: int  # the session id of every one of its processes (tests.integration.procs)


@pytest.fixture(scope="session")
def session_cluster(s3_server, tmp_path_factory) -> SessionCluster:
    """One Ray cluster for the whole test session, started as a cluster is (``ray start --head``, in a
    private temp dir, on free ports, in a session of its own) and joined with ``ray.init(address=...)``;
    stages reuse it instead of starting their own.

    Its processes are started with RAY_ADDRESS naming the cluster itself. Ray Train's placement-group
    cleaner looks its cluster up with Ray's state API, which, without an address, scans the machine for
    GCS servers: with a second cluster on the machine (one a test starts, a user's) it fails, the trainer's
    placement group is never removed and the next trainer waits forever for the CPUs it holds. The S3
    server comes first so that every Ray process starts with the AWS settings, as on a real cluster."""
    import ray

    from tests.integration import procs
    from tests.integration.raynodes import start_ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # mirrors of s3:// stage outputs in a temp dir, not in the user's ~/.cache (every worker sees it)
    os.environ["LMFORGE_CACHE"] = str(tmp_path_factory.mktemp("lmforge-cache"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    # Metrics reported every second (Ray's default is ten), so the serving tests see them soon.
    sid = start_ray(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                     f"--dashboard-port={free_port()}", "--include-dashboard=true",
                     f"--ray-client-server-port={free_port()}", "--temp-dir", temp,
                     '--system-config={"metrics_report_interval_ms": 1000}'],
                    env={**os.environ, "RAY_ADDRESS": address})
    try:
        ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": {
            "TOKENIZERS_PARALLELISM": "false", "LMFORGE_CACHE": os.environ["LMFORGE_CACHE"]}})
        yield SessionCluster(address, sid)
    finally:
        ray.shutdown()
        procs.discard_sessions([sid])
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(session_cluster) -> str:
    """The session cluster's address: what a test hands ``ray.address=`` (this process is connected)."""
    return session_cluster.address


def registered_steps(checkpoints: str) -> list[int]:
    """The steps Ray Train has registered under ``checkpoints`` (its run dir, local or ``s3://``), read
    from its checkpoint manager's snapshot: the checkpoints persisted whole, what a restarted worker group
    resumes from. [] before the first."""
    snapshot = f"{checkpoints}/checkpoint_manager_snapshot.json"
    if snapshot.startswith("s3://"):
        bucket, _, key = snapshot[len("s3://"):].partition("/")
        s3 = boto3.client("s3")
        try:
            text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        except s3.exceptions.NoSuchKey:
            return []
    else:
        path = Path(snapshot)
        text = path.read_text() if path.is_file() else ""
    return sorted(int(step) for step in re.findall(r'"step_(\d{6})"', text))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto_server) on loopback, started and stopped by this fixture."""
    port = free_port()
    # The venv's own moto_server first: one found on PATH may be another install's, and moto 5.2.0-5.2.1
    # answer CompleteMultipartUpload with a root tag pyarrow rejects (getmoto/moto#10055), which is what
    # failed Ray Train's first write to s3:// here. pyproject pins a fixed moto.
    exe = Path(sys.executable).parent / "moto_server"
    exe = str(exe) if exe.exists() else shutil.which("moto_server")
    log = open(os.environ.get("LMFORGE_MOTO_LOG", os.devnull), "w")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                boto3.client("s3").list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def small_data(ray_cluster, corpus_dir, tmp_path_factory):
    """The test corpus prepared once (64-token rows, a 1,024-token vocabulary, a tenth of the documents
    held out) for the smoke path, training, sweep and autoscaling tests, which only read it; they write
    their outputs beside it or in their own tmp dirs."""
    from lmforge import config as cfgmod
    from lmforge.data import prepare
    from lmforge.data.config import PrepareConfig

    out = tmp_path_factory.mktemp("small") / "data"
    return prepare.run(cfgmod.load(PrepareConfig, None, [f"inputs=[{corpus_dir}]", f"output={out}",
                                                         "pack.seq_len=64", "tokenizer.vocab_size=1024",
                                                         "pack.val_fraction=0.1"]))
