"""Ray Data glue for evaluation: requests go through model actors in batches; results come back.

Each actor loads the model once (:func:`lmforge.evaluate.backends.load_backend`) and runs
:func:`lmforge.evaluate.tasks.execute` on its batches. Requests travel as JSON strings (their shapes
differ by kind).
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa

from lmforge.progress import Ticker

log = logging.getLogger("lmforge.eval")


class _ModelActor:
    def __init__(self, model_dir: str, threads: int, batch_size: int, adapter: str | None):
        from lmforge import storage
        from lmforge.evaluate.backends import load_backend

        self.backend = load_backend(storage.local_dir(model_dir), threads, adapter)
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lmforge.evaluate.tasks import execute

        requests = [json.loads(r) for r in batch.column("request").to_pylist()]
        results = execute(self.backend, requests, self.batch_size)
        return pa.table({"result": [json.dumps({"rid": r["rid"], **results[r["rid"]]}) for r in requests]})


def actor_share(actors: int, actor_cpus: float | None, threads: int) -> tuple[float, int]:
    """``(CPUs each actor reserves, its intra-op threads)``: unset, the actors split the largest node's CPUs
    (eval runs alone in a recipe), and an actor runs as many threads as it has CPUs (Ray caps a 1-CPU
    actor's torch at one thread, which left one of two cores idle)."""
    import ray

    if actor_cpus is None:
        largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
        actor_cpus = max(1.0, float(int(largest // actors)))
    return actor_cpus, threads or max(1, int(actor_cpus))


def execute_on_ray(model_dir: str, requests: list[dict], batch_size: int, threads: int, actors: int,
                   actor_cpus: float | None, label: str = "eval", adapter: str | None = None) -> dict[str, dict]:
    """Every request's result by ``rid``; results stream back as batches finish, with a progress line
    (requests, rate, time left) at most every 10 s."""
    import ray

    actor_cpus, threads = actor_share(actors, actor_cpus, threads)
    log.info("%s: %d model actors, %s CPUs and %d threads each", label, actors, actor_cpus, threads)
    ds = ray.data.from_items([{"request": json.dumps(r)} for r in requests])
    scored = ds.map_batches(_ModelActor, fn_constructor_kwargs={"model_dir": model_dir, "threads": threads,
                                                                "batch_size": batch_size, "adapter": adapter},
                            batch_size=max(32, 8 * batch_size), batch_format="pyarrow", concurrency=actors,
                            num_cpus=actor_cpus)
    ticker = Ticker(log, label, len(requests), "requests")
    results = {}
    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        for raw in batch.column("result").to_pylist():
            result = json.loads(raw)
            results[result["rid"]] = result
        ticker.update(len(results))
    return results
