"""Jobs on a real multi-node Ray cluster with token auth: ``ray start --head`` plus a second node with
resources of its own, both started (and stopped) here, each in a private temp dir and a session of its
own. The quickstart recipe, shrunk, is submitted with ``lmforge submit`` and succeeds although the node
its training workers run on is killed (its log comes back with ``lmforge jobs logs``); a failing job's
status is the command's; ``lmforge jobs stop`` stops one; requests without the token or with a wrong
one are refused with a message that says so."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration import procs
from tests.integration.conftest import free_port, registered_steps
from tests.integration.raynodes import ROOT, lmforge, start_node, start_ray

pytestmark = pytest.mark.integration


@dataclass
class Cluster:
    address: str  # the Jobs API
    env: dict
    head: str  # the GCS address
    temps: list[str]
    sessions: list[int] = field(default_factory=list)  # one per node: what teardown stops


@pytest.fixture(scope="module")
def cluster(s3_server):
    """A token-auth head (2 CPUs, resource `head`) and a second node (1 CPU, resource `second`). The S3
    server comes first: the nodes start with its settings, as with an instance role."""
    token = secrets.token_hex(32)
    # A temp dir per node, as on separate machines (a shared one has one node's runtime-env cleanup
    # delete the other's job working dir); short, as Ray's socket paths must fit in 107 bytes.
    temp, temp2 = tempfile.mkdtemp(prefix="rh", dir="/tmp"), tempfile.mkdtemp(prefix="rw", dir="/tmp")
    port, dash = free_port(), free_port()
    # the venv activated, as on a cluster node whose `python` has lmforge's dependencies
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": path}
    env.pop("RAY_ADDRESS", None)
    c = Cluster(f"http://127.0.0.1:{dash}", env, f"127.0.0.1:{port}", [temp, temp2])
    try:
        c.sessions.append(start_ray(["--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
                                     '--resources={"head": 1}', "--include-dashboard=true",
                                     # a dead node is known in ~3 s, not Ray's default ~15 s (5 missed
                                     # health checks 3 s apart): the node-loss test waits on it
                                     '--system-config={"health_check_period_ms": 1000, '
                                     '"health_check_failure_threshold": 3}',
                                     f"--ray-client-server-port={free_port()}", "--temp-dir", temp], env))
        c.sessions.append(start_node(c.head, env, temp2, "--num-cpus=1", '--resources={"second": 1}'))
        yield c
    finally:
        # `ray stop` would stop every Ray on the machine: stop these nodes' sessions only
        procs.discard_sessions(c.sessions)
        for path in c.temps:
            shutil.rmtree(path, ignore_errors=True)


def _job_id(stderr: str) -> str:
    return re.search(r"lmforge submit: job (\S+) on", stderr).group(1)


def test_a_failing_job_fails_the_command_with_its_status(cluster, tmp_path):
    """The config is valid (checked before submitting); the job itself fails on the cluster, where the
    input is missing: ``lmforge submit`` exits 1 and says FAILED, with the job's error in its log."""
    result = lmforge("submit", "prepare", "jobs/prepare.yaml", f"inputs=[{tmp_path / 'no-such-corpus'}]",
                     f"output={tmp_path / 'data'}", "--address", cluster.address, env=cluster.env)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"job \S+ FAILED", result.stderr) and "no-such-corpus" in result.stdout
    assert not (tmp_path / "data").exists()


def test_bad_config_never_reaches_the_cluster(cluster):
    address, env = cluster.address, cluster.env
    result = lmforge("submit", "pretrain", "jobs/pretrain.yaml", "train.lrr=0.1", "--address", address, env=env)
    assert result.returncode == 2 and "did you mean train.lr?" in result.stderr


def test_requests_without_the_token_or_with_a_wrong_one_are_refused(cluster, tmp_path):
    address, env = cluster.address, cluster.env
    wrong = lmforge("jobs", "list", "--address", address, env={**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    assert wrong.returncode == 2 and "refused the token from RAY_AUTH_TOKEN" in wrong.stderr
    # no token anywhere: not in the environment, and no ~/.ray/auth_token in this HOME
    bare = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    missing = lmforge("jobs", "list", "--address", address, env={**bare, "HOME": str(tmp_path)})
    assert missing.returncode == 2 and "requires a token and none was sent" in missing.stderr


def _submit_sleeper(env: dict, address: str) -> str:
    """A job that holds one of the head's CPUs (its entrypoint reserves it), so that the training job's
    two workers are packed onto the node this test kills rather than onto the head. Returns its id."""
    code = (f"from lmforge.cli.submit import client; print(client({address!r}).submit_job("
            "entrypoint='sleep 900', entrypoint_num_cpus=1, entrypoint_resources={'head': 1}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=120)
    return out.stdout.split()[-1]


def _status(cluster: Cluster, job_id: str) -> str:
    listed = lmforge("jobs", "list", "--address", cluster.address, env=cluster.env)
    return re.search(rf"^{job_id}\t(\w+)", listed.stdout, re.M).group(1)


@pytest.mark.timeout(420)
def test_a_recipe_submitted_as_a_job_survives_the_loss_of_a_node(cluster, corpus_dir, tmp_path):
    """``lmforge submit jobs/quickstart.yaml`` (prepare -> pretrain, shrunk) on the cluster. Both training
    workers run on a node that is then SIGKILLed, raylet and all, as when a machine dies; Ray Train
    restarts the group on the two nodes that remain, from the last checkpoint (on S3: the nodes share no
    disk for it), and the job succeeds, its log streamed back and kept (``lmforge jobs logs``)."""
    import boto3

    out = tmp_path / "quickstart"
    sleeper = _submit_sleeper(cluster.env, cluster.address)
    victim = tempfile.mkdtemp(prefix="rv", dir="/tmp")
    cluster.temps.append(victim)
    victim_sid = start_node(cluster.head, cluster.env, victim, "--num-cpus=2", '--resources={"victim": 1}')
    cluster.sessions.append(victim_sid)  # the fixture's teardown stops whatever is left of it
    boto3.client("s3").create_bucket(Bucket="nodeloss")
    steps = 80
    job = procs.start(
        [sys.executable, "-m", "lmforge", "submit", "jobs/quickstart.yaml", f"output={out}",
         "stages=[prepare,pretrain]", f"prepare.inputs=[{corpus_dir}]", "prepare.text_field=text",
         "prepare.pack.seq_len=64", "prepare.tokenizer.vocab_size=1024", "pretrain.model.preset=tiny",
         "pretrain.train.num_workers=2", "pretrain.train.cpus_per_worker=1", f"pretrain.train.max_steps={steps}",
         "pretrain.train.checkpoint_every=20", "pretrain.train.eval_every=20", "pretrain.train.log_every=20",
         "pretrain.train.eval_batches=2", "pretrain.train.micro_batch_size=8", "pretrain.train.warmup_steps=10",
         "pretrain.train.max_failures=2", "pretrain.train.checkpoint_dir=s3://nodeloss/run",
         "--address", cluster.address],
        env=cluster.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while 20 not in registered_steps("s3://nodeloss/run/checkpoints"):
            assert job.poll() is None and time.monotonic() < deadline, "no checkpoint was registered"
            time.sleep(0.1)
        on_victim = [p for p in procs.in_session(victim_sid) if "RayTrainWorker" in " ".join(p.cmdline())]
        assert len(on_victim) == 2, f"expected both training workers on the node to kill, found {on_victim}"
        procs.stop_session(victim_sid, sig=signal.SIGKILL)
        stdout, stderr = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            procs.stop_session(job.pid, sig=signal.SIGKILL)
        stopped = lmforge("jobs", "stop", sleeper, "--address", cluster.address, env=cluster.env)
    assert job.returncode == 0, stdout[-4000:] + stderr[-4000:]
    assert "SUCCEEDED" in stderr and f"pretrain step {steps}/{steps}" in stdout  # the job's own log, streamed
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert summary["steps"] == steps
    # resumed once, from a registered checkpoint at or after the one seen before the kill, not from scratch
    assert len(summary["resumed_from"]) == 1 and 20 <= summary["resumed_from"][0] < steps, summary
    assert summary["resumed_from"][0] % 20 == 0
    job_id = _job_id(stderr)
    listed = lmforge("jobs", "list", "--address", cluster.address, env=cluster.env)
    assert listed.returncode == 0 and re.search(rf"^{job_id}\tSUCCEEDED\t.*jobs/quickstart.yaml", listed.stdout, re.M)
    logs = lmforge("jobs", "logs", job_id, "--address", cluster.address, env=cluster.env)
    assert logs.returncode == 0 and f"pretrain step {steps}/{steps}" in logs.stdout
    # `lmforge jobs stop` stopped the sleeper (900 s of sleep left)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout, stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 60
    while (status := _status(cluster, sleeper)) != "STOPPED" and time.monotonic() < deadline:
        time.sleep(1)
    assert status == "STOPPED"
