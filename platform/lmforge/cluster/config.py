"""Config of how a stage reaches Ray (the ``ray`` section every Ray-using stage has)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(kw_only=True)
class RayConfig:
    """How to reach Ray. No address (and no RAY_ADDRESS) means a local cluster for this command."""

    address: str | None = None  # e.g. ray://head:10001 or auto; default: $RAY_ADDRESS, else a local cluster
    num_cpus: int | None = None  # local cluster only; default: all cores
    # local cluster only: where each node serves Prometheus metrics (lmforge's and Ray Serve's, at
    # http://127.0.0.1:<port>/metrics); default: a free port, logged at start
    metrics_export_port: int | None = None
    # Stream Ray's own worker, Train and Serve logs to this terminal; by default they stay in Ray's
    # session log dir (its path is logged at start) and only lmforge's progress lines are shown.
    log_to_driver: bool = False
