"""Config of the ``serve`` stage."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lmforge.config import check
from lmforge.stages import UsesRay


@dataclasses.dataclass(kw_only=True)
class AutoscalingConfig:
    """Serve's autoscaling of each model's replicas (the keys map to Serve's ``autoscaling_config``)."""

    min_replicas: int = 1  # replicas kept up when idle
    max_replicas: int = 1  # more than min_replicas turns autoscaling on
    target_ongoing_requests: float = 4.0  # requests per replica Serve scales towards
    upscale_delay_s: float = 10.0  # load must last this long before a replica is added
    downscale_delay_s: float = 60.0  # and be gone this long before one is removed
    metrics_interval_s: float = 2.0  # how often replicas report their load
    look_back_period_s: float = 10.0  # the window the load is averaged over

    def __post_init__(self):
        check(self.min_replicas >= 1, "min_replicas", "must be >= 1")
        check(self.max_replicas >= self.min_replicas, "max_replicas", "must be >= min_replicas")
        check(self.target_ongoing_requests > 0, "target_ongoing_requests", "must be > 0")


@dataclasses.dataclass(kw_only=True)
class EngineConfig:
    """Continuous batching inside each replica."""

    max_running: int = 16  # sequences of up to short_context decoded together (KV cache slots); more wait
    max_prefill_tokens: int = 512  # prompt tokens computed per step: a longer prompt is prefilled in chunks
    max_context: int | None = None  # longest prompt + completion served; None: the model's own limit
    short_context: int = 1024  # positions of most slots (memory: slots x positions, fixed at start)
    long_slots: int = 1  # slots of max_context positions, beside max_running (for the requests that need them)
    max_waiting: int | None = None  # sequences queued beyond the free slots; None: 16 x max_running
    intra_op_threads: int = 0  # onnxruntime threads per replica; 0 lets it choose

    def __post_init__(self):
        check(self.max_running >= 1, "max_running", "must be >= 1")
        check(self.max_prefill_tokens >= 1, "max_prefill_tokens", "must be >= 1")
        check(self.short_context >= 1, "short_context", "must be >= 1")
        check(self.long_slots >= 0, "long_slots", "must be >= 0")

    def engine_args(self) -> dict:
        """The keyword arguments of :class:`lmforge.generate.engine.Engine`."""
        args = dataclasses.asdict(self)
        args.pop("intra_op_threads")
        return args


@dataclasses.dataclass(kw_only=True)
class ServeOptions:
    host: str = "127.0.0.1"  # 0.0.0.0 listens on every interface
    port: int = 8000  # HTTP port of the OpenAI API
    route_prefix: str = "/"  # where the app is mounted: "/api" serves /api/v1/completions, /api/healthz
    models: dict[str, str] = dataclasses.field(default_factory=dict)  # served name -> export dir, side by side
    model_name: str | None = None  # the name `model` is served under; default: its dir's run and name
    # API keys (requests need "Authorization: Bearer <key>"): listed here, comma-separated in the
    # environment variable api_keys_env, and one per line in api_keys_file; none at all: no auth
    api_keys: list[str] = dataclasses.field(default_factory=list)
    api_keys_env: str = "LMFORGE_API_KEYS"  # environment variable read on the cluster
    api_keys_file: str | None = None  # a file with one key per line
    autoscaling: AutoscalingConfig = dataclasses.field(default_factory=AutoscalingConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    replica_cpus: float = 1.0  # CPUs Ray reserves per model replica
    replica_gpus: float = 0.0  # GPUs per model replica (with device=cuda)
    device: Literal["cpu", "cuda"] = "cpu"  # onnxruntime's execution provider
    ingress_replicas: int = 1  # replicas of the HTTP front (auth, validation, routing by model)
    ingress_cpus: float = 0.1  # CPUs per front replica: it waits on the models, it does not compute
    max_ongoing_requests: int = 32  # per model replica; more wait in Serve's queue
    max_queued_requests: int = 64  # per deployment; past them 503 (or 429) with Retry-After
    backpressure_status: Literal[503, 429] = 503  # the status of a refused request
    retry_after_s: float = 1.0  # the Retry-After of a refused request
    max_tokens_limit: int = 1024  # requests asking for more get a 400 naming this limit
    default_max_tokens: int = 256  # chat completions that set no max_tokens (capped by the context)
    max_n: int = 4  # most choices per request
    max_embedding_inputs: int = 256  # most inputs per /v1/embeddings request
    max_request_bytes: int = 2 * 2**20  # larger request bodies get 413 before they are read
    # LoRA adapters (exports made with adapters=/lora_targets=): besides those exported beside a model, any
    # adapter dir under lora_root (local, or s3:// inside a finished stage output) is loaded when a request
    # names `<model>:<adapter>` or POST /v1/load_lora_adapter does; None: no loading at run time
    lora_root: str | None = None
    max_loaded_adapters: int = 8  # per replica, from lora_root; the least recently used idle one makes room
    log_prompts: bool = False  # request logs carry the prompt text (they never do by default)
    # a dir where every serving process appends a JSON line per request, without its text (tokens, finish
    # reasons, the prompt's language, status): what `lmforge monitor` reads; local, or a shared filesystem
    request_log: str | None = None
    startup_timeout_s: float = 180.0  # how long to wait for /healthz after deploying
    detach: bool = False  # deploy (or update a running app in place) and return, instead of serving until Ctrl-C

    def __post_init__(self):
        check(1 <= self.port <= 65535, "port", "must be a TCP port")
        check(self.route_prefix.startswith("/"), "route_prefix", "must start with /")
        check(self.replica_cpus > 0, "replica_cpus", "must be > 0")
        check(self.ingress_replicas >= 1, "ingress_replicas", "must be >= 1")
        check(self.max_tokens_limit >= 1, "max_tokens_limit", "must be >= 1")
        check(self.max_ongoing_requests >= 1, "max_ongoing_requests", "must be >= 1")
        check(self.max_queued_requests >= 0, "max_queued_requests", "must be >= 0")
        check(self.max_n >= 1, "max_n", "must be >= 1")
        check(self.max_embedding_inputs >= 1, "max_embedding_inputs", "must be >= 1")
        check(self.max_loaded_adapters >= 1, "max_loaded_adapters", "must be >= 1")
        check(self.max_request_bytes >= 1024, "max_request_bytes", "must be >= 1024")
        check(self.device == "cpu" or self.replica_gpus > 0, "replica_gpus", "device=cuda needs replica_gpus > 0")


@dataclasses.dataclass(kw_only=True)
class ServeConfig(UsesRay):
    model: str | None = None  # an export dir (model.onnx + tokenizer); or name several in serve.models
    serve: ServeOptions = dataclasses.field(default_factory=ServeOptions)  # the server's own settings

    def __post_init__(self):
        check(bool(self.model) or bool(self.serve.models), "model", "set `model` or `serve.models` (name -> dir)")
