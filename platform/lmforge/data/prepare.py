"""``lmforge prepare``: corpus files -> documents ledger -> tokenizer -> packed train/val shards.

Run: ``lmforge prepare jobs/prepare.yaml inputs=[data/*.jsonl] output=runs/data``.

Ray Data glue. Each file is read by a Ray task (sharded across the cluster) and every record is
curated there (:mod:`lmforge.data.curate`: clean, quality rules, PII, dedup keys) into a ledger row:
kept, dropped with a reason, or quarantined. Exact and near duplicates are found globally
(:mod:`lmforge.data.dedup_ray`); the tokenizer trains on a bounded sample streamed to the driver.
Then one ``map_batches`` pass on the workers marks the duplicates, tokenizes and packs the kept
documents (split train/val by document), writes every output as parquet parts and returns only counts.
The pure parts live beside it: :mod:`.curate` (per record), :mod:`.outputs` (the write pass),
:mod:`.packing`, :mod:`.manifest`, :mod:`.report`. Output: documents/, rejected/, tokenizer/, train/,
val/, manifest.json, report.md.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import pyarrow as pa

from lmforge import storage
from lmforge.cluster.session import ray_session
from lmforge.data import canaries, dedup_ray, manifest, outputs, report, sources, tokenizer
from lmforge.data.config import PrepareConfig
from lmforge.data.curate import CanaryPlan, curate_file
from lmforge.outputs import Output
from lmforge.progress import RayProgress, Ticker
from lmforge.tasks.contamination import TestIndex

log = logging.getLogger(__name__)


def run(cfg: PrepareConfig) -> Path:
    """Run the prepare stage; returns the output dir. A finished identical run is skipped."""
    out = Output("prepare", cfg)
    if out.skip():
        return out.result()
    files = sources.list_inputs(cfg.inputs, tuple(cfg.splits))
    sources.check_columns(files, cfg.text_field)  # a wrong text_field fails here, before any work
    log.info("prepare: %d input files", len(files))
    partial = out.begin()
    with ray_session(cfg.ray):
        result = _run_pipeline(cfg, files, partial, out.parts_root())
    (partial / "manifest.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    published = out.publish(keep=outputs.OUTPUT_DIRS)
    log.info("prepare: %s", json.dumps(result["documents"]))
    return published


def _run_pipeline(cfg: PrepareConfig, files: list[str], out: Path, parts: str) -> dict:
    """Curate, dedup, train the tokenizer, pack: small files into ``out``, the parquet parts (documents/,
    rejected/, train/, val/) where ``parts`` says (``out``, or the remote output itself)."""
    import ray

    ray.data.DataContext.get_current().execution_options.preserve_order = True  # deterministic
    clock = _Clock()
    plan = _canary_plan(cfg, files)
    tests = _test_index(cfg)
    progress = RayProgress(FilesRead(dict((f, size) for f, size, _ in storage.stat_files(files))))
    try:
        ledger = _read_ledger(cfg, files, plan, progress.queue, tests).materialize()
    finally:
        progress.close()
    clock.lap("read + curate")
    marks = dedup_ray.find_duplicates(ledger.filter(expr="reason == ''"), cfg.dedup)
    clock.lap("dedup")
    if cfg.tokenizer.from_model:  # the model's own: its pretraining continues on these rows
        tok, specials = tokenizer.from_model(storage.local_dir(storage.absolute(cfg.tokenizer.from_model)),
                                             str(out / "tokenizer"))
        clock.lap("tokenizer copied")
    else:
        tok = tokenizer.train_bpe(_sample_texts(ledger, marks, cfg.tokenizer.sample_chars), cfg.tokenizer.vocab_size,
                                  cfg.tokenizer.min_frequency)
        tokenizer.to_hf(tok, cfg.pack.seq_len).save_pretrained(str(out / "tokenizer"))
        specials = tokenizer.special_ids(tok)
        clock.lap("tokenizer trained")
    stats = _write_outputs(ledger, ray.put(marks), tok.to_str(), specials, cfg, parts)
    clock.lap("write + tokenize")
    result = manifest.build(stats, tok, specials, cfg.pack.seq_len, files, cfg.tokenizer.from_model)
    if plan is not None:  # recorded outside the corpus, for the privacy audit
        for canary in plan.canaries:
            canary.documents = stats["canaries"].get(canary.id, [])
        canaries.write(plan.canaries, out / "canaries.jsonl")
    report.plot_lengths(stats["lengths"], out / "doc_lengths.png")
    (out / "report.md").write_text(report.render(result))
    return result


class _Clock:
    """Logs the seconds each phase took, so a slow step is visible in every run's log."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        log.info("prepare: %-18s %6.1fs", phase, now - self.last)
        self.last = now


def _canary_plan(cfg: PrepareConfig, files: list[str]) -> CanaryPlan | None:
    """The canaries and the share of documents that gets each, for about ``copies`` copies of each."""
    if cfg.canaries.count == 0:
        return None
    records = sum(sources.count_records(f) for f in files)
    rate = min(1.0, cfg.canaries.copies / max(1, records))
    log.info("prepare: planting %d canaries, each in ~%d of ~%d documents", cfg.canaries.count,
             cfg.canaries.copies, records)
    return CanaryPlan(canaries.make(cfg.canaries.count, cfg.canaries.seed), rate)


class FilesRead:
    """Progress of read + curate, one file at a time as the tasks finish them: files, documents, MB of
    the corpus, its rate and the time left (by bytes; at most one line per 10 s)."""

    def __init__(self, sizes: dict[str, int]):
        self.sizes, self.files, self.documents = sizes, 0, 0
        self.ticker = Ticker(log, "prepare: read + curate", sum(sizes.values()), "MB", scale=1e6)

    def put(self, message: tuple[str, int]) -> None:
        path, documents = message
        self.files += 1
        self.documents += documents
        self.ticker.note = f"{self.files}/{len(self.sizes)} files, {self.documents:,} documents"
        self.ticker.add(self.sizes.get(path, 0))

    def close(self) -> None:
        pass


def _test_index(cfg: PrepareConfig) -> TestIndex | None:
    """The held-out examples of the tasks to decontaminate against (every one of each task's test split,
    whatever an eval later limits itself to)."""
    if not cfg.decontaminate:
        return None
    from lmforge.tasks.builtin import TASKS, expand
    from lmforge.tasks.examples import take

    tests = TestIndex({name: take(TASKS[name].load(), "test") for name in expand(cfg.decontaminate)})
    log.info("prepare: decontaminating against %s (%d distinct 13-grams)",
             ", ".join(f"{t}: {n} examples" for t, n in tests.examples.items()), len(tests.grams))
    return tests


def _read_ledger(cfg: PrepareConfig, files: list[str], plan: CanaryPlan | None, progress=None,
                 tests: TestIndex | None = None):
    import ray

    items = [{"path": f, "file_index": i} for i, f in enumerate(files)]
    remote_args = {"runtime_env": {"env_vars": env}} if (env := storage.reader_env(files)) else {}
    ds = ray.data.from_items(items, override_num_blocks=len(files))
    return ds.map_batches(_read_files, batch_size=1, batch_format="pyarrow",
                          fn_kwargs={"cfg": cfg, "plan": plan, "progress": progress, "tests": tests}, **remote_args)


def _read_files(batch: pa.Table, cfg: PrepareConfig, plan: CanaryPlan | None, progress=None,
                tests: TestIndex | None = None) -> pa.Table:
    """Ray task body: files -> curated ledger rows (kept, dropped with a reason, quarantined); each
    file's document count goes to the driver's ``progress`` queue."""
    paths, indices = batch.column("path").to_pylist(), batch.column("file_index").to_pylist()
    tables = []
    for path, index in zip(paths, indices):
        tables.append(curate_file(path, index, cfg, plan, tests))
        if progress is not None:
            progress.put((path, tables[-1].num_rows))
    return pa.concat_tables(tables)


def _sample_texts(ledger, marks: dict, max_chars: int):
    """Stream texts that survive dedup to the driver until ``max_chars``: the tokenizer's bounded sample."""
    seen = 0
    kept = ledger.filter(expr="reason == ''").select_columns(["order", "text"])
    for batch in kept.iter_batches(batch_size=1024, batch_format="pyarrow"):
        for order, text in zip(batch.column("order").to_pylist(), batch.column("text").to_pylist()):
            if seen >= max_chars:
                return
            if order not in marks:
                seen += len(text)
                yield text


def _write_outputs(ledger, marks_ref, tokenizer_json: str, specials: dict, cfg: PrepareConfig, out: str) -> dict:
    """One Ray Data pass over the ledger writes every output (documents/, rejected/, train/, val/) and
    returns the summed per-batch statistics; the driver never holds the corpus."""
    outputs.make_dirs(out)
    fn_kwargs = dict(marks_ref=marks_ref, tokenizer_json=tokenizer_json, special_tokens=specials,
                     seq_len=cfg.pack.seq_len, val_fraction=cfg.pack.val_fraction, out=str(out))
    stats = ledger.map_batches(_finalize, batch_size=cfg.pack.batch_size, batch_format="pyarrow",
                               fn_kwargs=fn_kwargs).take_all()
    outputs.write_empty_parts(out)
    return outputs.sum_stats(stats)


def _finalize(batch: pa.Table, marks_ref, **kwargs) -> pa.Table:
    return outputs.finalize_batch(batch, _marks(marks_ref), **kwargs)


@functools.lru_cache(maxsize=2)
def _marks(ref) -> dict:
    """The dedup marks, fetched from the object store once per worker process."""
    import ray

    return ray.get(ref)
