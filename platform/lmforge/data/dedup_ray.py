"""Ray glue for global deduplication across every shard and file: a hash shuffle on Ray tasks.

Exact: every kept document sends (exact_key, order, id) to partition ``exact_key % P``; each partition
sorts by (key, order) and the first document of each run of equal keys stays. Near: every document
sends one (band_key, order) row per LSH band to partition ``band_key % P``; each run of equal band keys
yields candidate edges to its first member. Only duplicates and candidate edges (a small fraction of the
corpus) come back to the driver; the candidates' signatures are fetched by one filtered pass over the
blocks, verified against ``near_threshold`` and clustered.

Why Ray tasks and not ``Dataset.groupby().map_groups()``: map_groups calls Python once per group, and
near-dedup has one group per (document, band), an order of magnitude slower than sort-based partitions
(docs/benchmarks.md). The shuffle is the classic one (map tasks with ``num_returns=P``, P
reduce tasks), with every block in the object store, so it scales with the cluster, not the driver.
Returns ``{order: (reason, duplicate_of id)}``.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lmforge.data import dedup
from lmforge.data.config import DedupConfig

log = logging.getLogger(__name__)

_MAX_PARTITIONS = 256  # map tasks x partitions objects: bounded so a big cluster does not drown in them


def find_duplicates(kept, cfg: DedupConfig) -> dict[int, tuple[str, str]]:
    """``kept``: a Dataset of documents that passed every other rule (columns order, id, exact_key, minhash)."""
    import ray

    blocks = kept.select_columns(["order", "id", "exact_key", "minhash"]).to_arrow_refs()
    marks: dict[int, tuple[str, str]] = {}
    exact_rep: dict[int, int] = {}
    if not blocks:
        return marks
    if cfg.exact:
        for table in ray.get(_shuffle(blocks, "exact", cfg)):
            for order, rep_order, rep_id in zip(*(table.column(c).to_pylist() for c in table.column_names)):
                marks[order] = ("exact_duplicate", rep_id)
                exact_rep[order] = rep_order
    if cfg.near:
        marks.update(_near(blocks, cfg, exact_rep, marks))
    log.info("dedup: %d exact, %d near duplicates", len(exact_rep), len(marks) - len(exact_rep))
    return marks


def _near(blocks, cfg: DedupConfig, exact_rep: dict[int, int], marks: dict) -> dict[int, tuple[str, str]]:
    import ray

    edges = set()
    for table in ray.get(_shuffle(blocks, "near", cfg)):
        for a, b in zip(table.column("a").to_pylist(), table.column("b").to_pylist()):
            a, b = exact_rep.get(a, a), exact_rep.get(b, b)
            if a != b:
                edges.add((min(a, b), max(a, b)))
    if not edges:
        return {}
    needed = pa.array(sorted({x for e in edges for x in e}), pa.int64())
    signatures, ids = {}, {}
    select = ray.remote(_select_orders)
    for table in ray.get([select.remote(b, needed) for b in blocks]):
        for order, doc_id, blob in zip(*(table.column(c).to_pylist() for c in ("order", "id", "minhash"))):
            signatures[order] = np.frombuffer(blob, dtype=np.uint32)
            ids[order] = doc_id
    clusters = dedup.near_duplicates(edges, signatures, cfg.near_threshold)
    return {o: ("near_duplicate", ids[rep]) for o, rep in clusters.items() if o not in marks}


def partitions() -> int:
    """Shuffle partitions: a few per CPU of the cluster (Ray's default of 200 drowns a small cluster)."""
    from lmforge.cluster.session import cluster_cpus

    return min(_MAX_PARTITIONS, max(2, 2 * int(cluster_cpus())))


def _shuffle(blocks: list, kind: str, cfg: DedupConfig) -> list:
    """Hash-partition every block's rows by key, reduce each partition; returns refs of result tables."""
    import ray

    n = partitions()
    split = ray.remote(_split).options(num_returns=n)
    pieces = [split.remote(block, kind, cfg, n) for block in blocks]
    pieces = [p if isinstance(p, list) else [p] for p in pieces]  # num_returns=1 gives a bare ref
    reduce = ray.remote(_reduce)
    return [reduce.remote(kind, *(p[i] for p in pieces)) for i in range(n)]


def _split(block: pa.Table, kind: str, cfg: DedupConfig, n: int):
    rows = _key_rows(block, kind, cfg)
    part = rows.column("key").to_numpy() % n  # numpy's modulo is never negative for n > 0
    out = [rows.filter(pa.array(part == i)) for i in range(n)]
    return out if n > 1 else out[0]


def _key_rows(block: pa.Table, kind: str, cfg: DedupConfig) -> pa.Table:
    if kind == "exact":
        return pa.table({"key": block.column("exact_key"), "order": block.column("order"),
                         "id": block.column("id")})
    blobs = block.column("minhash").to_pylist()
    has_sig = np.fromiter((bool(b) for b in blobs), dtype=bool, count=len(blobs))
    num_perm = cfg.bands * cfg.rows
    if not has_sig.any():
        return pa.table({"key": pa.array([], pa.int64()), "order": pa.array([], pa.int64())})
    sigs = np.frombuffer(b"".join(b for b in blobs if b), dtype=np.uint32).reshape(-1, num_perm)
    keys = dedup.band_keys(sigs, cfg.bands, cfg.rows)  # [docs, bands]
    orders = block.column("order").to_numpy()[has_sig]
    return pa.table({"key": keys.reshape(-1), "order": np.repeat(orders, cfg.bands)})


def _reduce(kind: str, *pieces: pa.Table) -> pa.Table:
    """One partition: sort by (key, order); every row after the first of a run of equal keys is a hit."""
    rows = pa.concat_tables(pieces).sort_by([("key", "ascending"), ("order", "ascending")])
    keys, orders = rows.column("key").to_numpy(), rows.column("order").to_numpy()
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    head = np.maximum.accumulate(np.where(first, np.arange(len(keys)), 0))  # index of each run's first row
    hit = ~first & (orders != orders[head])  # a document repeated in one bucket is not its own duplicate
    if kind == "exact":
        return pa.table({"order": orders[hit], "rep_order": orders[head[hit]],
                         "rep_id": rows.column("id").take(pa.array(head[hit]))})
    pairs = np.unique(np.stack([orders[head[hit]], orders[hit]], axis=1), axis=0) if hit.any() else \
        np.zeros((0, 2), dtype=np.int64)
    return pa.table({"a": pairs[:, 0], "b": pairs[:, 1]})


def _select_orders(block: pa.Table, orders: pa.Array) -> pa.Table:
    return block.select(["order", "id", "minhash"]).filter(pc.is_in(block.column("order"), value_set=orders))
