"""Ray Data glue for global deduplication across every shard and file.

Exact: kept documents are grouped by ``exact_key`` (a hash shuffle across the cluster); in each group
the first document in input order stays. Near: every document emits one row per LSH band; rows are
grouped by band key, and each bucket of two or more yields candidate edges to its first member. Only
the candidates (a small fraction of the corpus) come back to the driver, with their signatures, to be
verified against ``near_threshold`` and clustered. Returns ``{order: (reason, duplicate_of id)}``.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from lmforge.data import dedup
from lmforge.data.config import DedupConfig

log = logging.getLogger(__name__)

_EXACT_SCHEMA = pa.schema([("order", pa.int64()), ("rep_order", pa.int64()), ("rep_id", pa.string())])
_EDGE_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64())])
_BAND_SCHEMA = pa.schema([("band_key", pa.int64()), ("order", pa.int64())])


def find_duplicates(kept, cfg: DedupConfig) -> dict[int, tuple[str, str]]:
    """``kept``: a Dataset of documents that passed every other rule (columns order, id, exact_key, minhash)."""
    marks: dict[int, tuple[str, str]] = {}
    exact_rep: dict[int, int] = {}
    if kept.count() == 0:  # Ray's shuffle cannot sort a dataset without blocks
        return marks
    if cfg.exact:
        groups = kept.select_columns(["exact_key", "order", "id"]).groupby("exact_key", num_partitions=partitions())
        for row in groups.map_groups(_exact_group, batch_format="pyarrow").take_all():
            marks[row["order"]] = ("exact_duplicate", row["rep_id"])
            exact_rep[row["order"]] = row["rep_order"]
    if cfg.near:
        marks.update(_near(kept, cfg, exact_rep, marks))
    log.info("dedup: %d exact, %d near duplicates", len(exact_rep), len(marks) - len(exact_rep))
    return marks


def _near(kept, cfg: DedupConfig, exact_rep: dict[int, int], marks: dict) -> dict[int, tuple[str, str]]:
    bands = kept.select_columns(["order", "minhash"]).map_batches(
        _band_rows, batch_format="pyarrow", fn_kwargs={"bands": cfg.bands, "rows": cfg.rows})
    edges_ds = bands.groupby("band_key", num_partitions=partitions()).map_groups(_bucket_edges, batch_format="pyarrow")
    edges = set()
    for row in edges_ds.take_all():
        a, b = exact_rep.get(row["a"], row["a"]), exact_rep.get(row["b"], row["b"])
        if a != b:
            edges.add((min(a, b), max(a, b)))
    if not edges:
        return {}
    needed = {x for e in edges for x in e}
    rows = kept.select_columns(["order", "id", "minhash"]).filter(lambda r: r["order"] in needed).take_all()
    signatures = {r["order"]: np.frombuffer(r["minhash"], dtype=np.uint32) for r in rows}
    ids = {r["order"]: r["id"] for r in rows}
    clusters = dedup.near_duplicates(edges, signatures, cfg.near_threshold)
    return {o: ("near_duplicate", ids[rep]) for o, rep in clusters.items() if o not in marks}


def partitions() -> int:
    """Shuffle partitions: a few per CPU of the cluster (Ray's default of 200 drowns a small cluster)."""
    from lmforge.cluster.session import cluster_cpus

    return max(2, 2 * int(cluster_cpus()))


def _exact_group(group: pa.Table) -> pa.Table:
    if group.num_rows < 2:
        return _EXACT_SCHEMA.empty_table()
    group = group.sort_by("order")
    orders, ids = group.column("order").to_pylist(), group.column("id").to_pylist()
    n = len(orders) - 1
    return pa.table({"order": orders[1:], "rep_order": [orders[0]] * n, "rep_id": [ids[0]] * n},
                    schema=_EXACT_SCHEMA)


def _band_rows(batch: pa.Table, bands: int, rows: int) -> pa.Table:
    keys, orders = [], []
    for order, blob in zip(batch.column("order").to_pylist(), batch.column("minhash").to_pylist()):
        if blob:
            keys.append(dedup.band_keys(np.frombuffer(blob, dtype=np.uint32), bands, rows))
            orders.append(np.full(bands, order, dtype=np.int64))
    if not keys:
        return _BAND_SCHEMA.empty_table()
    return pa.table({"band_key": np.concatenate(keys), "order": np.concatenate(orders)}, schema=_BAND_SCHEMA)


def _bucket_edges(group: pa.Table) -> pa.Table:
    """A bucket of n documents -> n-1 candidate edges to its first member (a star, not all pairs)."""
    if group.num_rows < 2:
        return _EDGE_SCHEMA.empty_table()
    orders = np.unique(group.column("order").to_numpy())
    return pa.table({"a": np.full(len(orders) - 1, orders[0]), "b": orders[1:]}, schema=_EDGE_SCHEMA)
