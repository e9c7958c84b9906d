"""The report section of a sweep: its trials as a table, the best one, and its plots."""

from __future__ import annotations

import csv
import io
import re

from lmforge import storage
from lmforge.report import Section, absent, fmt, read, read_json, rerun


def sweep_section(cfg) -> Section:
    summary = read_json(cfg.output, "summary.json") if cfg else None
    if summary is None:
        return absent("Sweep", "tune", " (`lmforge tune jobs/tune_tiny.yaml` runs a sweep on its own)")
    output, metric = cfg.output, summary["metric"]
    counts = ", ".join(f"{summary[k]} {k.replace('_', ' ')}" for k in ("completed", "stopped_by_scheduler",
                                                                      "early_stopped", "error") if summary.get(k))
    section = Section("Sweep", rerun("tune", output), [
        f"{summary['trials']} trials of {summary.get('stage', 'training')} ({counts}): "
        f"{summary['trial_steps']} trial steps run of {summary['trial_steps_if_all_completed']} had every trial "
        f"run to the end; {fmt(summary['seconds'])} s."])
    if best := summary.get("best"):
        values = ", ".join(f"{k}={fmt(v)}" for k, v in best["params"].items())
        section.lines.append(f"Best: {best['trial_id']}, {metric} {fmt(best[metric])} at step {best['step']} "
                             f"({values})" + (f"; `{cfg.stage}` trained with these values." if cfg.apply_best else
                                              f"; `lmforge {summary.get('stage')} {storage.join(output, 'best.yaml')}` "
                                              "trains with them."))
    if raw := read(output, "trials.csv"):
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
        if rows:
            section.tables.append((rows[0], [[fmt(_number(c)) for c in r] for r in rows[1:]]))
    for name, caption in (("curves.png", f"Sweep: {metric} of every trial (short lines: stopped by the scheduler)"),
                          ("params.png", f"Sweep: best {metric} of each trial against its values")):
        if png := read(output, name):
            section.images.append((caption, png))
    return section


def _number(cell: str):
    """A CSV cell that is a decimal number as a float (shown to 4 significant digits); ids stay text."""
    return float(cell) if re.fullmatch(r"-?\d+\.\d*(e[-+]?\d+)?", cell, re.IGNORECASE) else cell
