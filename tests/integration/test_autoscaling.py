"""Real autoscaling: a Ray head whose autoscaler runs Ray's fake multi-node provider (worker "machines"
are Ray nodes it starts on this host), with token auth. The head has no CPUs; ``lmforge pretrain`` run
as a user runs it, pointed at the cluster by ``RAY_ADDRESS``, asks for two 1-CPU workers; the real
autoscaler adds nodes to place them, and once training is done the idle nodes are removed. The head and
every node its autoscaler starts share the head's session (tests.integration.procs): those are the
processes stopped at the end.

(``ray.cluster_utils.AutoscalingCluster`` would do this setup, but its config file is missing from the
2.60 wheel and it runs ``ray stop --force``. The stages run as drivers here, not as submitted jobs: the
fake provider's nodes share the head's session dir, and a node joining deletes the ``runtime_resources``
dir there, the working dir of a job already running; real nodes have session dirs of their own, which
the submit tests run.)"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration import procs
from tests.integration.conftest import free_port
from tests.integration.raynodes import RAY, ROOT, start_ray

pytestmark = pytest.mark.integration
WORKER_TYPE = "cpu_worker"


def fake_provider_config(gcs: str, idle_minutes: float) -> dict:
    """A cluster config as ``ray up`` takes one, on the fake provider: a head of 0 CPUs and an
    autoscaling type of 1-CPU workers (0 to 3)."""
    return {
        "cluster_name": "lmforge-fake", "max_workers": 3, "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_minutes,
        # gcs_address: the head started below (the provider's default, port 6379, may be another cluster's)
        "provider": {"type": "fake_multinode", "gcs_address": gcs, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 3},
        },
        "head_node_type": "ray.head.default", "auth": {"ssh_user": "ubuntu"}, "docker": {},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@pytest.fixture(scope="module")
def autoscaling_head(tmp_path_factory):
    """The head (0 CPUs, token auth, the fake provider's autoscaler); yields (address, gcs, env, temp)."""
    token = secrets.token_hex(32)
    temp = tempfile.mkdtemp(prefix="ra", dir="/tmp")
    port, dash = free_port(), free_port()
    gcs = f"127.0.0.1:{port}"
    config = tmp_path_factory.mktemp("autoscaler") / "fake.json"
    config.write_text(json.dumps(fake_provider_config(gcs, idle_minutes=0.1)))
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": path,
           "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    env.pop("RAY_ADDRESS", None)
    sid = start_ray(["--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=0",
                     f"--autoscaling-config={config}", "--include-dashboard=true",
                     f"--ray-client-server-port={free_port()}", "--temp-dir", temp], env)
    try:
        yield f"http://127.0.0.1:{dash}", gcs, env, temp
    finally:
        procs.discard_sessions([sid])  # the head, its autoscaler and every fake node it started
        shutil.rmtree(temp, ignore_errors=True)


def active_workers(gcs: str, env: dict) -> int:
    """Worker nodes of WORKER_TYPE the autoscaler reports as active (``ray status``). A failed ``ray
    status`` (or output without its "Active:" section) raises: read as 0 nodes, it would let the
    scale-down check pass on a cluster that never answered."""
    done = subprocess.run([RAY, "status", f"--address={gcs}"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Active:" in done.stdout, (done.returncode, done.stdout[-1000:],
                                                              done.stderr[-2000:])
    active = done.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
    return sum(int(n) for n in re.findall(rf"^\s*(\d+) {WORKER_TYPE}", active, re.M))


@pytest.mark.timeout(420)
def test_training_demand_adds_nodes_and_idle_nodes_go_away(autoscaling_head, small_data, tmp_path):
    _, gcs, env, _ = autoscaling_head
    assert active_workers(gcs, env) == 0
    data, out = small_data, tmp_path / "train"
    env = {**env, "RAY_ADDRESS": gcs}
    job = procs.start(
        [sys.executable, "-m", "lmforge", "pretrain", "jobs/pretrain.yaml", f"data={data}",
         f"output={out}", "model.preset=tiny", "train.num_workers=2", "train.cpus_per_worker=1",
         "train.max_steps=40", "train.eval_every=20", "train.log_every=20", "train.checkpoint_every=20",
         "train.eval_batches=2", "train.micro_batch_size=8", "train.warmup_steps=10"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, deadline = 0, time.monotonic() + 300
    try:
        # Without nodes added, training never starts. Every 2 s: each `ray status` is a Python process, CPU
        # the job's own workers need on 2 cores (the nodes stay up for 6 s after the job at the least).
        while job.poll() is None and time.monotonic() < deadline:
            peak = max(peak, active_workers(gcs, env))
            time.sleep(2.0)
    finally:
        if job.poll() is None:
            procs.stop_session(job.pid, sig=9)
        stdout, stderr = job.communicate(timeout=60)
    assert job.returncode == 0, stdout[-4000:] + stderr[-4000:]
    assert f"connecting to Ray at {gcs}" in stderr  # RAY_ADDRESS, not a cluster of its own
    assert json.loads((out / "summary.json").read_text())["steps"] == 40
    assert peak >= 2, f"the autoscaler never had two workers up for the two training workers (peak {peak})"
    deadline = time.monotonic() + 120
    while (left := active_workers(gcs, env)) > 0 and time.monotonic() < deadline:
        time.sleep(2.0)
    assert left == 0, f"{left} idle worker nodes still up 2 minutes after the job (idle timeout 6 s)"
