"""How many trials run at once and what each asks for, from the cluster's size. No Ray.

A trial is a driver (the Tune function trainable, which only waits on its trainer) plus its Ray Train
workers. The driver holds a sliver of a CPU: a whole one each would leave the workers of the trials it
drives nothing to run on, and the sweep would wait forever for CPUs its own drivers hold
(RAY_NOTES.md). Everything is planned so that all concurrent trials' drivers and workers fit at once.
A trial planned with no workers trains in its own process, without a trainer: it is its one worker (a
sweep plans its trials so when they have one worker: :func:`lmforge.tune.stage.trial_workers`).
"""

from __future__ import annotations

import dataclasses
import math

from lmforge.config import ConfigError

DRIVER_CPUS = 0.05  # Ray refuses 0 for a trainable; it needs next to nothing
HEADROOM = 0.95  # of the cluster's CPUs, for Ray's own actors and tasks


@dataclasses.dataclass(frozen=True)
class Plan:
    concurrent: int  # trials at once
    driver_cpus: float
    worker_cpus: float  # per training worker
    workers: int  # per trial
    use_gpu: bool

    def describe(self) -> str:
        gpu = " + 1 GPU" if self.use_gpu else ""
        if self.workers == 0:
            return (f"{self.concurrent} trial(s) at once, each training in its own process "
                    f"({self.driver_cpus:.2f} CPU{gpu})")
        return (f"{self.concurrent} trial(s) at once, each {self.workers} worker(s) x {self.worker_cpus:.2f} CPU{gpu}"
                f" + a {self.driver_cpus:.2f}-CPU driver")

    def trial_resources(self) -> dict:
        """What Tune reserves for each trial's own process (its trainer's workers reserve their own)."""
        return {"CPU": self.driver_cpus, **({"GPU": 1} if self.workers == 0 and self.use_gpu else {})}


def plan(cluster_cpus: float, cluster_gpus: float, *, workers: int, use_gpu: bool, num_samples: int,
         max_concurrent: int | None = None, cpus_per_worker: float | None = None) -> Plan:
    """As many trials at once as fit with one CPU (or GPU) per worker, or ``max_concurrent`` (CPU workers
    then get a fraction of a CPU each), never more than there are trials; each worker gets an equal
    share of the CPUs (at most one) unless ``cpus_per_worker`` is set."""
    if workers == 0:  # each trial trains in its own process: planned as one worker, without a driver
        one = plan(cluster_cpus, cluster_gpus, workers=1, use_gpu=use_gpu, num_samples=num_samples,
                   max_concurrent=max_concurrent, cpus_per_worker=cpus_per_worker)
        return Plan(one.concurrent, one.worker_cpus + one.driver_cpus, 0.0, 0, use_gpu)
    usable = HEADROOM * cluster_cpus
    if use_gpu:
        fits = int(cluster_gpus // workers)
        if fits < 1:
            raise ConfigError(f"base train.num_workers: {workers} GPU workers per trial, but the cluster has "
                              f"{cluster_gpus:g} GPU(s)")
    else:
        per_worker = cpus_per_worker or 1.0
        fits = max(1, int(cluster_cpus // (workers * per_worker)))  # the share below leaves the headroom
    concurrent = min(num_samples, max_concurrent or fits)
    if use_gpu and concurrent > fits:
        raise ConfigError(f"max_concurrent_trials: {concurrent} trials x {workers} GPU worker(s) need more than the "
                          f"cluster's {cluster_gpus:g} GPU(s)")
    share = (usable - concurrent * DRIVER_CPUS) / (concurrent * workers)
    worker_cpus = cpus_per_worker or min(1.0, math.floor(share * 100) / 100)
    if worker_cpus < 0.1 or concurrent * (DRIVER_CPUS + workers * worker_cpus) > cluster_cpus:
        raise ConfigError(f"max_concurrent_trials: {concurrent} trial(s) x {workers} worker(s) do not fit the "
                          f"cluster's {cluster_cpus:g} CPUs (lower it, or train.num_workers)")
    return Plan(concurrent, DRIVER_CPUS, worker_cpus, workers, use_gpu)
