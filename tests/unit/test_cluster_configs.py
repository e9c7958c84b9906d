"""cluster.yaml passes Ray's own autoscaler schema (unknown fields, wrong types)."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


def test_aws_cluster_yaml_is_valid_for_ray():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))
    assert cfg["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert {"cpu", "gpu-1x", "gpu-8x"} <= set(cfg["available_node_types"])


def test_the_validator_does_reject_a_bad_config():
    import pytest

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cfg["max_workerz"] = 3
    with pytest.raises(Exception):
        validate_config(prepare_config(cfg))


def test_serve_config_file_is_valid_for_serve_and_builds_the_app(onnx_dir):
    """infra/serve.yaml passes Serve's own schema, and its builder makes the app from its args."""
    from ray.serve.schema import ServeDeploySchema

    from lmforge.stages import load

    cfg = yaml.safe_load((ROOT / "infra" / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(cfg)
    app = cfg["applications"][0]
    args = dict(app["args"], serve={**app["args"]["serve"], "models": {"quickstart": str(onnx_dir)}})
    built = load(app["import_path"])(args)
    assert type(built).__name__ == "Application"
