"""``lmforge models list|show|rollback``: the registry read by a person, and a version brought back."""

from __future__ import annotations

import json

from lmforge import config as cfgmod
from lmforge.update.config import ModelsConfig, RollbackConfig
from lmforge.update.registry import VERSION_COLUMNS, Registry, version_rows


def list_versions(cfg: ModelsConfig) -> str:
    """A table: version, status, when it went live and was replaced, its parent, and the gate's word."""
    rows = [VERSION_COLUMNS, *version_rows(Registry(cfg.registry).versions())]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def show(cfg: ModelsConfig) -> str:
    registry = Registry(cfg.registry)
    found = registry.get(cfg.version) if cfg.version else registry.live()
    if found is None:
        known = ", ".join(v["version"] for v in registry.versions()) or "none"
        raise FileNotFoundError(f"models: no version {cfg.version or '(live)'} in {cfg.registry} (known: {known})")
    return json.dumps(found, indent=2, ensure_ascii=False)


def rollback(cfg: RollbackConfig) -> dict:
    """Switch the deployment back to ``version`` (default: the version live before the current one)."""
    from lmforge.cluster.session import ray_session
    from lmforge.monitor.probe import served
    from lmforge.update import switch

    registry = Registry(cfg.registry)
    ray = cfgmod.to_dict(cfg.ray)
    live = served(switch.endpoint(cfg.serve, ray), cfg.api_key_env)
    target = registry.get(cfg.version) if cfg.version else previous(registry, live["version"])
    if target is None or not target.get("export"):
        raise FileNotFoundError(f"models rollback: no exported version {cfg.version or 'before ' + live['version']} "
                                f"in {cfg.registry}")
    with ray_session(cfg.ray):
        switch.switch_to(cfg.serve, ray, target["export"], live["model"], cfg.api_key_env, cfg.switch_timeout_s)
    registry.append("rolled_back", live["version"], reason=f"lmforge models rollback to {target['version']}")
    registry.append("live", target["version"], reason=f"rollback from {live['version']}")
    return {"live": target["version"], "rolled_back": live["version"]}


def previous(registry: Registry, current: str) -> dict | None:
    """The version that went live last before ``current`` did."""
    lives = [e["version"] for e in registry.events()
             if e["event"] in ("live", "registered") and e["version"] != current]
    return registry.get(lives[-1]) if lives else None
