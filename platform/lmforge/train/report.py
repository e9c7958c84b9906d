"""The report section of a training stage's run: its summary, and its loss curves."""

from __future__ import annotations

from lmforge.report import Section, absent, fmt, read, read_json, rerun

KEYS = ("params", "workers", "steps", "best_step", "best_val_loss", "final_loss", "resumed_from", "seconds")


def training_section(title: str, stage: str, cfg) -> Section:
    summary = read_json(cfg.output, "summary.json") if cfg else None
    if summary is None:
        return absent(title, stage)
    section = Section(title, rerun(stage, cfg.output),
                      [f"`model/` is the checkpoint of step {summary.get('best_step')} (the best val loss)."],
                      [(["", "value"], [[k, fmt(summary.get(k))] for k in KEYS if k in summary])])
    if png := read(cfg.output, "loss.png"):
        section.images.append((f"{title}: train and val loss", png))
    return section
