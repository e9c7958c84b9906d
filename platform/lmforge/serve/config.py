"""Config of the ``serve`` stage."""

from __future__ import annotations

import dataclasses

from lmforge.cluster.config import RayConfig
from lmforge.config import check


@dataclasses.dataclass(kw_only=True)
class AutoscalingConfig:
    min_replicas: int = 1  # replicas kept up when idle
    max_replicas: int = 1  # more than min_replicas turns Serve's autoscaling on

    def __post_init__(self):
        check(self.min_replicas >= 1, "min_replicas", "must be >= 1")
        check(self.max_replicas >= self.min_replicas, "max_replicas", "must be >= min_replicas")


@dataclasses.dataclass(kw_only=True)
class ServeOptions:
    host: str = "127.0.0.1"  # 0.0.0.0 listens on every interface
    port: int = 8000  # HTTP port of the OpenAI API
    api_keys: list[str] = dataclasses.field(default_factory=list)  # empty: no auth (local use)
    model_name: str | None = None  # the id /v1/models reports; default: the model dir's name
    autoscaling: AutoscalingConfig = dataclasses.field(default_factory=AutoscalingConfig)
    replica_cpus: float = 1.0  # CPUs Ray reserves per replica
    intra_op_threads: int = 0  # onnxruntime threads per replica; 0 lets it choose
    max_tokens_limit: int = 1024  # requests asking for more are rejected with a 400
    startup_timeout_s: float = 120.0  # how long to wait for /healthz after deploying

    def __post_init__(self):
        check(1 <= self.port <= 65535, "port", "must be a TCP port")
        check(self.replica_cpus > 0, "replica_cpus", "must be > 0")
        check(self.max_tokens_limit >= 1, "max_tokens_limit", "must be >= 1")


@dataclasses.dataclass(kw_only=True)
class ServeConfig:
    model: str  # an export output dir (model.onnx + tokenizer)
    serve: ServeOptions = dataclasses.field(default_factory=ServeOptions)  # the server's own settings
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
