"""A sweep's search space, checked before any trial starts, and a trial's config built from it. No Ray.

    space:
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.hidden_size: {choice: [32, 64, 96]}

Each key is a dotted key of the base stage's config. Every value the space can produce at its bounds
(or each choice) is run through that config class, so a value the stage would refuse (a preset that
does not exist, a width the heads do not divide) stops the sweep here, naming the key, and not in the
fifth trial an hour later.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lmforge import config as cfgmod
from lmforge.config import ConfigError

KINDS = ("loguniform", "uniform", "choice", "randint")

# Keys a sweep sets itself, or that must be equal across trials for their metrics to compare.
SWEEP_OWNED = {
    "output": "each trial's output is the sweep's to set",
    "force": "each trial's output is the sweep's to set",
    "train.checkpoint_dir": "each trial checkpoints under the sweep's storage",
    "train.resume": "the sweep resumes its trials itself (tune.resume)",
    "train.num_workers": "trial resources are planned once for the whole sweep",
    "train.use_gpu": "trial resources are planned once for the whole sweep",
    "train.cpus_per_worker": "trial resources are planned once for the whole sweep",
    "train.eval_every": "trials must report at the same steps for the scheduler to compare them",
    "train.checkpoint_every": "a trial checkpoints at every evaluation (what it reports)",
}


@dataclasses.dataclass(frozen=True)
class Param:
    key: str  # dotted key of the stage config
    kind: str  # one of KINDS
    args: tuple  # (lo, hi) or the choices

    def probes(self) -> list:
        """Values that stand for everything this parameter can take: its bounds, or every choice."""
        return list(self.args)


def trial_dict(base: dict, params: dict[str, Any], sweep_set: dict[str, Any]) -> dict:
    """The base config with a trial's sampled values and the sweep's own keys (output, ...) set."""
    return cfgmod.merge(cfgmod.merge(base, cfgmod.nest(params)), cfgmod.nest(sweep_set))


def flatten(space: dict, leaves: list[str], prefix: str = "") -> dict[str, Any]:
    """Dotted keys, however they were written: ``{train.lr: {...}}`` in YAML and ``space.train.lr=...``
    on the command line (which nests as ``{train: {lr: {...}}}``) are the same parameter. A mapping
    under a config's leaf key (or holding a kind) is that key's distribution."""
    flat = {}
    for key, spec in space.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(spec, dict) and spec and dotted not in leaves and not any(k in KINDS for k in spec):
            flat.update(flatten(spec, leaves, dotted))
        else:
            flat[dotted] = spec
    return flat


def parse(space: dict, stage_cls: type, stage: str, base: dict, sweep_set: dict[str, Any],
          shared: tuple[str, ...] = ()) -> list[Param]:
    """Check ``space`` against the stage's config; raises ConfigError naming ``space.<key>``. ``shared``:
    keys the stage makes what every trial shares from (its ``SHARED_BY_TRIALS``), not to be swept."""
    known = cfgmod.dotted_keys(stage_cls)
    params = []
    for key, spec in flatten(space, known).items():
        where = f"space.{key}"
        if key not in known:
            close = cfgmod.suggest(key, known)
            hint = f"did you mean {' or '.join(close)}?" if close else f"keys of a {stage} config: {', '.join(known)}"
            raise ConfigError(f"{where}: not a key of the {stage} config ({hint})")
        if key in SWEEP_OWNED or key.startswith("ray."):
            raise ConfigError(f"{where}: cannot be swept: {SWEEP_OWNED.get(key, 'how trials reach Ray is fixed')}")
        if key in shared:
            raise ConfigError(f"{where}: cannot be swept: what every trial trains on is made from it once")
        param = _param(where, key, spec)
        for value in param.probes():
            try:
                cfgmod.from_dict(stage_cls, trial_dict(base, {key: value}, sweep_set))
            except ConfigError as e:
                raise ConfigError(f"{where}: {value!r} is refused by the {stage} config ({e})") from None
        params.append(param)
    return params


def _param(where: str, key: str, spec: Any) -> Param:
    form = "{loguniform: [lo, hi]}, {uniform: [lo, hi]}, {choice: [a, b, ...]} or {randint: [lo, hi]}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{where}: expected one of {form}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list of values, got {args!r}")
        if len({repr(a) for a in args}) != len(args):
            raise ConfigError(f"{where}: choice lists a value twice: {args!r}")
        return Param(key, kind, tuple(args))
    number = int if kind == "randint" else (int, float)
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, number) and not isinstance(a, bool) for a in args)):
        what = "integers" if kind == "randint" else "numbers"
        raise ConfigError(f"{where}: {kind} needs [lo, hi], two {what}, got {args!r}")
    lo, hi = args
    if kind == "randint" and lo > hi:
        raise ConfigError(f"{where}: randint needs lo <= hi, got [{lo}, {hi}]")
    if kind != "randint" and not lo < hi:
        raise ConfigError(f"{where}: {kind} needs lo < hi, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform needs 0 < lo, got lo={lo} (the log of it is sampled)")
    return Param(key, kind, (lo, hi))


def log_scale(param: Param) -> bool:
    """Whether the parameter is best plotted on a log axis."""
    return param.kind == "loguniform"
