"""Ray session glue: connect to ``ray.address`` / ``RAY_ADDRESS`` or start a local cluster.

Stages call :func:`ray_session` around their Ray work. When a session is already up (tests, ``lmforge
run`` chaining stages) it is reused and left running; a cluster the command started itself is shut
down when the command ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from lmforge.stages import RayConfig

log = logging.getLogger(__name__)


def _runtime_env() -> dict:
    # Workers import lmforge by module name; installed (pip install -e .) it is found everywhere.
    # Quiet the tokenizers fork warning inside Ray workers.
    return {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}


# Where Ray's log lines in this process go instead of the terminal (None: to the terminal, as Ray sets up).
_driver_log: logging.Handler | None = None


@contextlib.contextmanager
def ray_session(cfg: RayConfig | None = None) -> Iterator[None]:
    """Yield with Ray initialised; shut it down afterwards only if this call started it."""
    import ray

    cfg = cfg or RayConfig()
    quiet_ray_data()
    if ray.is_initialized():
        yield
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(runtime_env=_runtime_env(), log_to_driver=cfg.log_to_driver, configure_logging=False)
    notices = _hold_startup_notices() if not cfg.log_to_driver else None
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # The dashboard serves the state API that Train and Tune use to clean up placement groups.
        ray.init(num_cpus=cfg.num_cpus, _metrics_export_port=cfg.metrics_export_port, **kwargs)
    if notices is not None:
        _ray_logs_to_file(notices)
    try:
        yield
    finally:
        ray.shutdown()


def ray_log_dir() -> str | None:
    """The connected Ray session's log dir (workers, Train, Serve and this driver's Ray log lines)."""
    import ray

    try:
        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except AttributeError:  # connected through Ray Client: the logs are on the cluster
        return None


# Ray's notice, on starting a local cluster, that token auth is on (ray.init resets the "ray" logger's
# handlers while it starts, so its child is the one to hold).
_STARTUP_NOTICES = "ray._private.authentication.authentication_token_setup"


def _hold_startup_notices() -> logging.Handler:
    from logging.handlers import MemoryHandler

    held = MemoryHandler(capacity=1000, flushLevel=logging.CRITICAL + 1)
    logger = logging.getLogger(_STARTUP_NOTICES)
    logger.handlers, logger.propagate = [held], False
    return held


def metrics_address() -> str | None:
    """Where this node's Prometheus metrics are served (Ray's metrics agent), or None when unknown."""
    import ray

    try:
        node = ray._private.worker._global_node
        return f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    except AttributeError:  # Ray Client
        return None


def _ray_logs_to_file(notices: logging.Handler) -> None:
    """Ray's own log lines in this process go to ``lmforge-driver.log`` in Ray's session log dir."""
    global _driver_log
    logs = ray_log_dir()
    _driver_log = logging.FileHandler(os.path.join(logs, "lmforge-driver.log")) if logs else logging.NullHandler()
    _driver_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    notices.setTarget(_driver_log)
    notices.flush()
    keep_ray_logs_off_terminal("ray", "ray.data", "ray.train", "ray.tune", _STARTUP_NOTICES)
    if logs:
        log.info("Ray's logs: %s (ray.log_to_driver=true shows them here)", logs)


def keep_ray_logs_off_terminal(*names: str) -> None:
    """Send these Ray loggers' lines to the session's log file instead of the terminal (Ray Data and
    Serve give their loggers handlers of their own when imported); a no-op when asked to stream logs."""
    if _driver_log is None:
        return
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [_driver_log], False


def quiet_ray_data() -> None:
    """Ray Data logs every operator's progress at INFO; lmforge logs its own summary instead."""
    import ray.data
    from ray.util.debug import log_once

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    log_once("ray_data_progress_manager_disabled")  # we turned them off: no warning that they are off
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def cluster_cpus() -> float:
    """CPUs the connected cluster has in total."""
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))
