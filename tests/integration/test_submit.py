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
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def cluster():
    """A token-auth head (2 CPUs) and a second node (1 CPU, resource `second`); yields (address, env)."""
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
                    "--include-dashboard=true", f"--ray-client-server-port={free_port()}", *_ports(),
                    "--temp-dir", temp, "--disable-usage-stats"], env=env, check=True, capture_output=True)
    try:
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"second": 1}',
                        *_ports(), "--temp-dir", temp2], env=env, check=True, capture_output=True)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        # `ray stop` would stop every Ray on the machine: stop these two nodes only, every process they
        # started (agents outlive a killed raylet otherwise, holding their ports)
        import psutil

        procs = []
        for pid in {*_pids_matching(temp), *_pids_matching(temp2), *_pids_matching(f":{port} ")}:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                procs += [proc, *proc.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(temp2, ignore_errors=True)


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


def test_quickstart_recipe_submitted_as_a_job_succeeds_on_two_nodes(cluster, corpus_dir, tmp_path):
    address, env = cluster
    out = tmp_path / "quickstart"
    result = lmforge(
        "submit", "run", "jobs/quickstart.yaml", f"output={out}", f"prepare.inputs=[{corpus_dir}]",
        "prepare.text_field=text",
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
    address, env = cluster
    result = lmforge("submit", "pretrain", "jobs/pretrain.yaml", "train.lrr=0.1", "--address", address, env=env)
    assert result.returncode == 2 and "did you mean train.lr?" in result.stderr


def test_requests_without_the_token_or_with_a_wrong_one_are_refused(cluster, tmp_path):
    address, env = cluster
    wrong = lmforge("jobs", "list", "--address", address, env={**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    assert wrong.returncode == 2 and "refused the token from RAY_AUTH_TOKEN" in wrong.stderr
    # no token anywhere: not in the environment, and no ~/.ray/auth_token in this HOME
    bare = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    missing = lmforge("jobs", "list", "--address", address, env={**bare, "HOME": str(tmp_path)})
    assert missing.returncode == 2 and "requires a token and none was sent" in missing.stderr
