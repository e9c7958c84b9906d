"""Integration fixtures: one real local Ray cluster for the whole test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest


@pytest.fixture(scope="session")
def ray_cluster(s3_server, tmp_path_factory):
    """``ray.init`` once per session (start-up costs ~4 s); stages reuse it instead of starting their own.

    The S3 server comes first so that every Ray process starts with the AWS settings in its environment,
    as on a real cluster."""
    import ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # mirrors of s3:// stage outputs in a temp dir, not in the user's ~/.cache (every worker sees it)
    os.environ["LMFORGE_CACHE"] = str(tmp_path_factory.mktemp("lmforge-cache"))
    # Metrics reported every second (Ray's default is ten), so the serving tests see them soon.
    ray.init(num_cpus=2, log_to_driver=False, _system_config={"metrics_report_interval_ms": 1000},
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false",
                                       "LMFORGE_CACHE": os.environ["LMFORGE_CACHE"]}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


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
    """The test corpus prepared once (64-token rows, a 1,024-token vocabulary) for the training and
    sweep tests, which only read it; they write their outputs beside it or in their own tmp dirs."""
    from lmforge import config as cfgmod
    from lmforge.data import prepare
    from lmforge.data.config import PrepareConfig

    out = tmp_path_factory.mktemp("small") / "data"
    return prepare.run(cfgmod.load(PrepareConfig, None, [f"inputs=[{corpus_dir}]", f"output={out}",
                                                         "pack.seq_len=64", "tokenizer.vocab_size=1024"]))
