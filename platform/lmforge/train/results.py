"""A finished training run's outputs: ``model/`` (the best checkpoint by val_loss), ``metrics.jsonl``,
``loss.png`` and ``summary.json``, written into the stage's output dir from its checkpoints."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from lmforge.train import checkpoint
from lmforge.train.plots import plot_loss
from lmforge.train.progress import METRICS_FILE

log = logging.getLogger(__name__)


def write_results(out: Path, root: str, seconds: float, stage: str) -> dict:
    """Copy the best checkpoint's model to ``out/model`` and write the run's metrics, plot and summary;
    returns the summary. The metrics file is rewritten from the last checkpoint's history, so it is
    complete even when the live file was written on another node."""
    ckpts = checkpoint.list_checkpoints(root)
    if not ckpts:
        raise RuntimeError(f"{stage}: training finished without a checkpoint in {root}/{checkpoint.RUN_NAME}")
    with tempfile.TemporaryDirectory() as tmp:
        state = checkpoint.read_state(checkpoint.local_copy(ckpts[-1], Path(tmp) / "latest"))
        best = checkpoint.best(ckpts, state["history"])
        best_dir = checkpoint.local_copy(best, Path(tmp) / "best")
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.copytree(best_dir / "model", out / "model")
    rows = state["history"]
    (out / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {**state["summary"], "steps": state["step"], "best_step": state.get("best_step"),
               "best_val_loss": state.get("best_val"), "stopped_early": state.get("stopped_early", False),
               "resumed_from": state.get("resumed_from", []), "model_from": Path(best).name,
               "seconds": round(seconds, 2), "final_loss": rows[-1]["loss"] if rows else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_loss(rows, out / "loss.png")
    log.info("%s: %s", stage, json.dumps(summary))
    return summary
