"""Integration fixtures: one real local Ray cluster for the whole test session."""

from __future__ import annotations

import os
import socket

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """``ray.init`` once per session (start-up costs ~4 s); stages reuse it instead of starting their own."""
    import ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ray.init(num_cpus=2, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
