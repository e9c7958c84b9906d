"""Typed stage configs: YAML files plus dotted command-line overrides.

Every stage owns one ``@dataclass(kw_only=True)`` config. This module turns plain dicts (from YAML and
``a.b=value`` overrides) into those dataclasses, strictly: an unknown key or a value of the wrong type
raises :class:`ConfigError` naming the full dotted key, before any work starts.

    cfg = load(PrepareConfig, "jobs/prepare.yaml", ["pack.seq_len=256", "inputs=[a.jsonl,b.jsonl]"])
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, missing or has a bad value. The message names the dotted key."""


def check(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError for ``key`` unless ``condition`` holds (for use in ``__post_init__``)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=3", "c=[x,y]"]`` -> ``{"a": {"b": 3}, "c": ["x", "y"]}``; values are parsed as YAML."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        try:
            set_dotted(tree, key, yaml.safe_load(raw) if raw.strip() else None)
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
    return tree


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """``tree["a"]["b"] = value`` for ``key="a.b"``, making the mappings on the way."""
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"{part} is already set to a value")
    tree[leaf] = value


def get_dotted(tree: Any, key: str) -> Any:
    """The value at a dotted key, through mappings and dataclasses; None where a part is missing."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else getattr(tree, part, None)
        if tree is None:
            return None
    return tree


def nest(flat: dict[str, Any]) -> dict:
    """``{"train.lr": 0.1}`` -> ``{"train": {"lr": 0.1}}``."""
    tree: dict = {}
    for key, value in flat.items():
        set_dotted(tree, key, value)
    return tree


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping from a file (local, or ``s3://``: a stage output's ``config.yaml``), with a clear
    error when it is missing or not a mapping."""
    from lmforge import storage

    p = os.fspath(path)
    text = storage.read_text(p)
    if text is None:
        raise ConfigError(f"config file {p} does not exist")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping, got {type(data).__name__}")
    return data


def load(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] = ()) -> T:
    """Build ``cls`` from an optional YAML file with dotted overrides applied on top."""
    data = read_yaml(path) if path else {}
    return from_dict(cls, merge(data, parse_overrides(list(overrides))))


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Strictly convert a mapping into dataclass ``cls``; errors name the dotted key."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {key_of(f): f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(unknown_key_message(cls, _join(prefix, unknown[0]), prefix))
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ checks name keys relative to the dataclass
        raise ConfigError(_join(prefix, str(e)) if prefix else str(e)) from None


def key_of(f: dataclasses.Field) -> str:
    """A field's key in YAML and on the command line: its name, or ``metadata["key"]`` where the name
    cannot be a Python identifier (a recipe's ``import`` section)."""
    return f.metadata.get("key", f.name)


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key of a config class as a dotted name (nested dataclasses expanded)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = _join(prefix, key_of(f))
        nested = nested_class(hints[f.name])
        keys += dotted_keys(nested, key) if nested else [key]
    return keys


def suggest(key: str, candidates: list[str]) -> list[str]:
    """The candidates closest to a mistyped ``key`` (by the whole dotted name or its last part): the best
    match and any as good as it, none when nothing is close."""
    def score(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, key, candidate).ratio()
        leaf = difflib.SequenceMatcher(None, key.rsplit(".", 1)[-1], candidate.rsplit(".", 1)[-1]).ratio()
        return max(whole, leaf)

    scored = sorted(((score(c), c) for c in candidates), reverse=True)
    best = scored[0][0] if scored else 0.0
    return [c for s, c in scored if s >= 0.7 and s >= best - 0.03][:3]


def unknown_key_message(cls: type, key: str, prefix: str = "") -> str:
    """``train.lrr: unknown key (did you mean train.lr?)``, searched over the section's own keys."""
    candidates = dotted_keys(cls, prefix)
    close = suggest(key, candidates)
    hint = f"did you mean {' or '.join(close)}?" if close else f"known keys: {', '.join(candidates)}"
    return f"{key}: unknown key ({hint})"


def nested_class(tp: Any) -> type | None:
    """The dataclass a field holds, also through ``X | None``; None for plain values."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 and dataclasses.is_dataclass(inner[0]) else None
    return None


SHOWN_LAST = ("tuned_by", "force", "ray")  # set by a recipe, or how to run: after what the stage takes


def ordered_fields(cls) -> list[dataclasses.Field]:
    """A config's fields as dumps and ``--help`` show them: its own first, the run-control keys last."""
    return sorted(dataclasses.fields(cls), key=lambda f: f.name in SHOWN_LAST)


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict suitable for YAML."""
    if dataclasses.is_dataclass(obj):
        return {key_of(f): to_dict(getattr(obj, f.name)) for f in ordered_fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump(obj: Any) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)


def write(obj: Any, out_dir: str | os.PathLike) -> Path:
    """Write the resolved config to ``out_dir/config.yaml`` (every stage does this)."""
    path = Path(out_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump(obj))
    return path


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against type hint ``tp``; convert the few safe cases (int -> float)."""
    tp = {dict: dict[str, Any], list: list[Any]}.get(tp, tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(_closest(errors, key) or f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(args[0] if args else Any, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _coerce(vt, v, _join(key, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    return _coerce_scalar(tp, value, key)


def _closest(errors: list[str], key: str) -> str | None:
    """Of a union's alternatives that refused a value, the one that took its shape and refused something
    inside it (a TaskSpec mapping with an unknown metric) says why; one refusal is its own reason."""
    if len(errors) == 1:
        return errors[0]
    inside = [e for e in errors if not e.startswith((f"{key}: expected", f"{key}: must be one of"))]
    return inside[0] if inside else None


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"{key}: unsupported config type {tp}")
