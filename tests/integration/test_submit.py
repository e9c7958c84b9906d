"""Jobs on a real multi-node Ray cluster with token auth: ``ray start --head`` plus a second node with
resources of its own, both started (and stopped) here in a private temp dir. The quickstart recipe,
shrunk, is submitted with ``lmforge submit`` and succeeds; requests without the token or with a wrong
one are refused with a message that says so."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.raynodes import RAY, ROOT, _pids_matching, _ports, lmforge, start_node, stop_node_processes


@pytest.fixture(scope="module")
def cluster(s3_server):
    """A token-auth head (2 CPUs, resource `head`) and a second node (1 CPU, resource `second`); yields
    (address, env). The S3 server comes first: the nodes start with its settings, as with an instance role."""
    token = secrets.token_hex(32)
    # A temp dir per node, as on separate machines (a shared one has one node's runtime-env cleanup
    # delete the other's job working dir); short, as Ray's socket paths must fit in 107 bytes.
    temp, temp2 = tempfile.mkdtemp(prefix="rh", dir="/tmp"), tempfile.mkdtemp(prefix="rw", dir="/tmp")
    port, dash = free_port(), free_port()
    # the venv activated, as on a cluster node whose `python` has lmforge's dependencies
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": path}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([RAY, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
                    '--resources={"head": 1}', "--include-dashboard=true", f"--ray-client-server-port={free_port()}",
                    *_ports(), "--temp-dir", temp, "--disable-usage-stats"], env=env, check=True, capture_output=True)
    temps = [temp, temp2]
    try:
        start_node(f"127.0.0.1:{port}", env, temp2, "--num-cpus=1", '--resources={"second": 1}')
        yield f"http://127.0.0.1:{dash}", env, f"127.0.0.1:{port}", temps
    finally:
        # `ray stop` would stop every Ray on the machine: stop these nodes only
        stop_node_processes([*temps, f":{port} "])
        for path in temps:
            shutil.rmtree(path, ignore_errors=True)


def test_quickstart_recipe_submitted_as_a_job_succeeds_on_two_nodes(cluster, corpus_dir, tmp_path):
    address, env, *_ = cluster
    out = tmp_path / "quickstart"
    result = lmforge(
        "submit", "run", "jobs/quickstart.yaml", f"output={out}", f"prepare.inputs=[{corpus_dir}]",
        "prepare.text_field=text", "stages=[prepare,pretrain,export,serve]", "questions=[]",
        "prepare.pack.seq_len=64", "prepare.tokenizer.vocab_size=1024", "pretrain.model.preset=tiny",
        "pretrain.train.max_steps=20", "pretrain.train.eval_every=10", "pretrain.train.log_every=10",
        f"serve.serve.port={free_port()}", "prompts=[The river]", "max_tokens=8", "--address", address, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "SUCCEEDED" in result.stderr
    assert "pretrain step 20/20" in result.stdout  # the job's own log, streamed back
    assert json.loads((out / "train" / "summary.json").read_text())["steps"] == 20
    assert (out / "onnx" / "model.onnx").is_file()
    listed = lmforge("jobs", "list", "--address", address, env=env)
    assert listed.returncode == 0 and "SUCCEEDED" in listed.stdout and "jobs/quickstart.yaml" in listed.stdout


def test_bad_config_never_reaches_the_cluster(cluster):
    address, env, *_ = cluster
    result = lmforge("submit", "pretrain", "jobs/pretrain.yaml", "train.lrr=0.1", "--address", address, env=env)
    assert result.returncode == 2 and "did you mean train.lr?" in result.stderr


def test_requests_without_the_token_or_with_a_wrong_one_are_refused(cluster, tmp_path):
    address, env, *_ = cluster
    wrong = lmforge("jobs", "list", "--address", address, env={**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    assert wrong.returncode == 2 and "refused the token from RAY_AUTH_TOKEN" in wrong.stderr
    # no token anywhere: not in the environment, and no ~/.ray/auth_token in this HOME
    bare = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    missing = lmforge("jobs", "list", "--address", address, env={**bare, "HOME": str(tmp_path)})
    assert missing.returncode == 2 and "requires a token and none was sent" in missing.stderr


def _submit_sleeper(env: dict, address: str) -> str:
    """A job that holds one of the head's CPUs (its entrypoint reserves it), so that the training job's
    two workers are packed onto the node this test kills rather than onto the head. Returns its id."""
    code = (f"from lmforge.cluster.jobs import client; print(client({address!r}).submit_job("
            "entrypoint='sleep 900', entrypoint_num_cpus=1, entrypoint_resources={'head': 1}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


def _snapshot_names(bucket: str, key: str) -> str:
    """The text of Ray Train's checkpoint-manager snapshot on S3 ('' until it exists)."""
    import boto3

    try:
        return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except Exception as e:  # NoSuchKey until the first checkpoint is registered
        if "NoSuchKey" not in type(e).__name__ + str(e):
            raise
        return ""


def _train_workers_under(temp: str) -> list:
    """Ray Train worker processes started by the node whose temp dir is ``temp``."""
    import psutil

    workers = []
    for pid in _pids_matching(temp):
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if "RayTrainWorker" in " ".join(child.cmdline()):
                        workers.append(child)
    return workers


def test_training_job_survives_the_loss_of_a_node(cluster, corpus_dir, tmp_path):
    """Both training workers run on a node that is then SIGKILLed, raylet and all, as when a machine
    dies; Ray Train restarts the group on the two nodes that remain, from the last checkpoint (on S3: the
    nodes share no disk for it), and the job finishes."""
    import boto3

    address, env, head, temps = cluster
    data, out = tmp_path / "data", tmp_path / "train"
    prepared = lmforge("submit", "prepare", "jobs/prepare.yaml", f"inputs=[{corpus_dir}]", "text_field=text",
                       f"output={data}", "pack.seq_len=64", "tokenizer.vocab_size=1024", "--address", address, env=env)
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    sleeper = _submit_sleeper(env, address)
    victim = tempfile.mkdtemp(prefix="rv", dir="/tmp")
    temps.append(victim)  # the fixture's teardown stops whatever is left of it
    start_node(head, env, victim, "--num-cpus=2", '--resources={"victim": 1}')
    boto3.client("s3").create_bucket(Bucket="nodeloss")
    steps = 80
    job = subprocess.Popen(
        [sys.executable, "-m", "lmforge", "submit", "pretrain", "jobs/pretrain.yaml", f"data={data}",
         f"output={out}", "model.preset=tiny", "train.num_workers=2", "train.cpus_per_worker=1",
         f"train.max_steps={steps}", "train.checkpoint_every=20", "train.eval_every=20", "train.log_every=20",
         "train.eval_batches=2", "train.micro_batch_size=8", "train.warmup_steps=10", "train.max_failures=2",
         "train.checkpoint_dir=s3://nodeloss/run", "--address", address],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while '"step_000020"' not in _snapshot_names("nodeloss", "run/checkpoints/checkpoint_manager_snapshot.json"):
            assert job.poll() is None and time.monotonic() < deadline, "no checkpoint was registered"
            time.sleep(0.1)
        on_victim = _train_workers_under(victim)
        assert len(on_victim) == 2, f"expected both training workers on the node to kill, found {on_victim}"
        stop_node_processes([victim], sig="kill")
        stdout, stderr = job.communicate(timeout=480)
    finally:
        if job.poll() is None:
            job.kill()
        lmforge("jobs", "stop", sleeper, "--address", address, env=env)
    assert job.returncode == 0, stdout[-4000:] + stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == steps
    # resumed once, from a registered checkpoint at or after the one seen before the kill, not from scratch
    assert len(summary["resumed_from"]) == 1 and 20 <= summary["resumed_from"][0] < steps, summary
    assert summary["resumed_from"][0] % 20 == 0
