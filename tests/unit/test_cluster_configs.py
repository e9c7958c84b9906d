"""The cluster files: the launcher configs (AWS, GCP, Azure) pass Ray's own autoscaler schema, and the
KubeRay manifests agree with them and with each other on image, Ray version, token auth and resources."""

import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = {"aws": ROOT / "cluster.yaml", "gcp": ROOT / "infra" / "gcp.yaml", "azure": ROOT / "infra" / "azure.yaml"}
KUBERAY = ROOT / "infra" / "kuberay"
# GPUs per node type, as each cloud's machine names them
GPUS = {"aws": {"gpu-1x": "g6e.4xlarge", "gpu-8x": "p5.48xlarge"},
        "gcp": {"gpu-1x": "g2-standard-16", "gpu-8x": "a3-highgpu-8g"},
        "azure": {"gpu-1x": "Standard_NV36ads_A10_v5", "gpu-8x": "Standard_ND96isr_H100_v5"}}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("cloud", LAUNCHER)
def test_launcher_config_is_valid_for_ray_with_token_auth_and_gpu_workers(cloud):
    cfg = load(LAUNCHER[cloud])
    validate_config(prepare_config(cfg))
    assert cfg["provider"]["type"] == cloud
    types = cfg["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0} and {"cpu", "gpu-1x", "gpu-8x"} <= set(types)
    machine = {name: yaml.safe_dump(t["node_config"]) for name, t in types.items()}
    assert all(GPUS[cloud][name] in machine[name] for name in ("gpu-1x", "gpu-8x"))
    # token auth on the head and every worker, with the token synced to every node
    starts = cfg["head_start_ray_commands"][-1] + cfg["worker_start_ray_commands"][-1]
    assert starts.count("RAY_AUTH_MODE=token ray start") == 2
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert cfg["docker"]["image"] == load(LAUNCHER["aws"])["docker"]["image"]
    assert cfg["setup_commands"] == ["pip install -q -e ~/lmforge"]


def test_the_validator_does_reject_a_bad_config():
    cfg = load(LAUNCHER["aws"])
    cfg["max_workerz"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_workerz"):
        validate_config(prepare_config(cfg))


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_manifests_agree_with_each_other_and_the_launcher_files():
    cluster, job, service = (load(KUBERAY / f) for f in ("raycluster.yaml", "rayjob.yaml", "rayservice.yaml"))
    assert [m["apiVersion"] for m in (cluster, job, service)] == ["ray.io/v1"] * 3
    assert [m["kind"] for m in (cluster, job, service)] == ["RayCluster", "RayJob", "RayService"]
    # one image: Ray's image of the launcher files with lmforge installed (infra/Dockerfile)
    base = load(LAUNCHER["aws"])["docker"]["image"]
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert re.search(r"^FROM (\S+)$", dockerfile, re.M).group(1) == base
    tag = re.search(r"-t (\S+) \.", dockerfile).group(1)
    version = base.split(":")[1].split("-")[0]
    assert version == ray.__version__ and tag.endswith(f"ray{base.split(':')[1]}")
    specs = [cluster["spec"], service["spec"]["rayClusterConfig"]]
    containers = [c for spec in specs for c in _containers(spec)]
    containers += job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert {c["image"] for c in containers} == {tag}
    assert all(spec["rayVersion"] == version and spec["authOptions"] == {"mode": "token"} for spec in specs)
    for c in containers:  # and the token itself, from one Secret, in every container
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ray-auth-token", "key": "token"}
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    # worker groups: the launcher's node types, with the GPUs their names promise
    launcher = load(LAUNCHER["aws"])["available_node_types"]
    for spec in specs:
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["maxReplicas"] <= launcher[group["groupName"]]["max_workers"]
            gpus = group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
            assert gpus == {"cpu": None, "gpu-1x": "1", "gpu-8x": "8"}[group["groupName"]]


def test_rayservice_runs_the_serve_config_file_app():
    from ray.serve.schema import ServeDeploySchema

    service = load(KUBERAY / "rayservice.yaml")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    app, file_app = embedded["applications"][0], load(ROOT / "infra" / "serve.yaml")["applications"][0]
    assert app["import_path"] == file_app["import_path"]
    assert app["args"]["serve"]["models"] == file_app["args"]["serve"]["models"]


def test_serve_config_file_is_valid_for_serve_and_builds_the_app(onnx_dir):
    """infra/serve.yaml passes Serve's own schema, and its builder makes the app from its args."""
    import importlib

    from ray.serve.schema import ServeDeploySchema

    cfg = yaml.safe_load((ROOT / "infra" / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(cfg)
    app = cfg["applications"][0]
    args = dict(app["args"], serve={**app["args"]["serve"], "models": {"quickstart": str(onnx_dir)}})
    module, _, name = app["import_path"].partition(":")
    built = getattr(importlib.import_module(module), name)(args)
    assert type(built).__name__ == "Application"
