"""A finished sweep on paper: ``trials.csv``, the best trial, ``summary.json`` and the plots. No Ray."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any

from lmforge.tune.space import Param, log_scale


@dataclasses.dataclass
class Trial:
    trial_id: str
    params: dict[str, Any]  # the sampled values, by dotted key
    history: list[dict]  # every report in order: step, the metric, loss, stopped_early
    error: str | None = None
    wall_s: float = 0.0

    @property
    def steps(self) -> int:
        return max((r.get("step", 0) for r in self.history), default=0)

    def best(self, metric: str, mode: str) -> tuple[float | None, int | None]:
        """The trial's best reported value of ``metric`` and the step it came at."""
        rows = [r for r in self.history if _finite(r.get(metric))]
        if not rows:
            return None, None
        pick = min if mode == "min" else max
        row = pick(rows, key=lambda r: r[metric])
        return row[metric], row.get("step")

    def status(self, max_steps: int) -> str:
        if self.error:
            return "error"
        if self.steps >= max_steps:
            return "completed"
        if self.history and self.history[-1].get("stopped_early"):
            return "early_stopped"  # the trial's own patience
        return "stopped_by_scheduler"


def short(value: Any) -> str:
    """A sampled value or metric as log lines show it (4 significant digits for floats)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def best_trial(trials: list[Trial], metric: str, mode: str) -> Trial | None:
    scored = [t for t in trials if t.best(metric, mode)[0] is not None]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda t: t.best(metric, mode)[0])


def table(trials: list[Trial], params: list[Param], metric: str, mode: str, max_steps: int) -> list[dict]:
    """One row per trial: its values, best metric (and step), steps run, status, wall time."""
    rows = []
    for t in trials:
        value, step = t.best(metric, mode)
        rows.append({"trial_id": t.trial_id, **{p.key: t.params.get(p.key) for p in params},
                     f"best_{metric}": value, "best_step": step, "steps": t.steps, "status": t.status(max_steps),
                     "wall_s": round(t.wall_s, 1), "error": (t.error or "").splitlines()[0][:200] if t.error else ""})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial_id"])
        writer.writeheader()
        writer.writerows(rows)


def summary(trials: list[Trial], metric: str, mode: str, max_steps: int, seconds: float) -> dict:
    """Counts by status, compute spent (trial-steps) against running every trial to the end, the best."""
    statuses = [t.status(max_steps) for t in trials]
    best = best_trial(trials, metric, mode)
    out = {"trials": len(trials), **{s: statuses.count(s) for s in
                                     ("completed", "stopped_by_scheduler", "early_stopped", "error")},
           "trial_steps": sum(t.steps for t in trials), "trial_steps_if_all_completed": len(trials) * max_steps,
           "seconds": round(seconds, 1), "metric": metric, "mode": mode, "best": None}
    if best is not None:
        value, step = best.best(metric, mode)
        out["best"] = {"trial_id": best.trial_id, metric: value, "step": step, "params": best.params}
    return out


def start_to_training(events: Path) -> dict | None:
    """Seconds from each trial's start to its first training step (the ``training`` events): the
    machinery's cost per trial, ``{"min", "median", "max", "trials"}``; None when none was recorded."""
    import json
    import statistics

    lines = events.read_text().splitlines() if events.is_file() else []
    after = sorted(e["after_s"] for e in map(json.loads, lines) if e.get("event") == "training")
    if not after:
        return None
    return {"min": after[0], "median": round(statistics.median(after), 2), "max": after[-1], "trials": len(after)}


def plot_curves(trials: list[Trial], metric: str, path: Path, best: Trial | None) -> None:
    """The metric against steps, one line per trial (the scheduler's stops show as short lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trials:
        points = [(r["step"], r[metric]) for r in t.history if _finite(r.get(metric))]
        if points:
            steps, values = zip(*points)
            is_best = best is not None and t.trial_id == best.trial_id
            ax.plot(steps, values, marker=".", linewidth=2.5 if is_best else 1.0,
                    label=f"{t.trial_id}{' (best)' if is_best else ''}")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial")
    if len(trials) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_params(trials: list[Trial], params: list[Param], metric: str, mode: str, path: Path) -> None:
    """For each swept key: every trial's best metric against the value it tried."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.8), squeeze=False)
    for ax, p in zip(axes[0], params):
        points = [(t.params.get(p.key), t.best(metric, mode)[0]) for t in trials]
        points = [(x, y) for x, y in points if y is not None]
        if p.kind == "choice":
            labels = [str(c) for c in p.args]
            xs = [labels.index(str(x)) for x, _ in points]
            ax.set_xticks(range(len(labels)), labels)
        else:
            xs = [x for x, _ in points]
            if log_scale(p):
                ax.set_xscale("log")
        ax.scatter(xs, [y for _, y in points])
        ax.set_xlabel(p.key)
        ax.set_ylabel(f"best {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
