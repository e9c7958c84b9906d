"""Ray session glue: connect to ``ray.address`` / ``RAY_ADDRESS`` or start a local cluster.

Stages call :func:`ray_session` around their Ray work. When a session is already up (tests, ``lmforge
run`` chaining stages) it is reused and left running; a cluster the command started itself is shut
down when the command ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class RayConfig:
    """How to reach Ray. No address (and no RAY_ADDRESS) means a local cluster for this command."""

    address: str | None = None
    num_cpus: int | None = None  # local cluster only; default: all cores


def _runtime_env() -> dict:
    # Workers import lmforge by module name; installed (pip install -e .) it is found everywhere.
    # Quiet the tokenizers fork warning inside Ray workers.
    return {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}


@contextlib.contextmanager
def ray_session(cfg: RayConfig | None = None) -> Iterator[None]:
    """Yield with Ray initialised; shut it down afterwards only if this call started it."""
    import ray

    quiet_ray_data()
    if ray.is_initialized():
        yield
        return
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(runtime_env=_runtime_env(), log_to_driver=True, configure_logging=False)
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # The dashboard (+0.4 s) serves the state API that Train and Tune use to clean up placement groups.
        ray.init(num_cpus=cfg.num_cpus, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def quiet_ray_data() -> None:
    """Ray Data logs every operator's progress at INFO; lmforge logs its own summary instead."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def cluster_cpus() -> float:
    """CPUs the connected cluster has in total."""
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))
