"""The model registry: every version served, what it came from, and when it went live and was replaced.

One JSONL file (local or ``s3://``), an event per line, appended and never rewritten in place, so a
person reads the history as it happened: ``registered`` (a version found live that the registry did not
know), ``candidate`` (trained, evaluated, with its gate decision), ``live`` (serving), ``replaced`` (another
version took over), ``rolled_back`` (taken off after a failed post-switch probe or by ``lmforge models
rollback``). :func:`versions` folds the events into one record per version. One writer at a time (an
``s3://`` file is read and written whole).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from lmforge import storage


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Registry:
    def __init__(self, uri: str):
        self.uri = uri

    def events(self) -> list[dict]:
        text = storage.read_text(self.uri) if storage.is_remote(self.uri) else _read_local(self.uri)
        return [json.loads(line) for line in (text or "").splitlines() if line.strip()]

    def append(self, event: str, version: str, **fields) -> dict:
        row = {"time": _now(), "event": event, "version": version, **fields}
        line = json.dumps(row, ensure_ascii=False) + "\n"
        if storage.is_remote(self.uri):
            body = (storage.read_text(self.uri) or "") + line
            fs, path = storage.filesystem(self.uri)
            with fs.open_output_stream(path) as f:
                f.write(body.encode())
        else:
            path = Path(storage.resolve_local(self.uri))
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(line)
        return row

    def versions(self) -> list[dict]:
        return versions(self.events())

    def get(self, version: str) -> dict | None:
        return next((v for v in self.versions() if v["version"] == version), None)

    def live(self) -> dict | None:
        """The version serving now, by the registry's account."""
        return next((v for v in self.versions() if v["status"] == "live"), None)


def versions(events: list[dict]) -> list[dict]:
    """One record per version, in the order first seen: its fields (the latest value of each), ``status``
    (candidate, refused, live, replaced, rolled_back), ``live_at``/``replaced_at`` and its ``history``."""
    out: dict[str, dict] = {}
    for e in events:
        v = out.setdefault(e["version"], {"version": e["version"], "status": None, "live_at": None,
                                          "replaced_at": None, "history": []})
        v.update({k: val for k, val in e.items() if k not in ("time", "event", "version")})
        step = {"time": e["time"], "event": e["event"]}
        v["history"].append({**step, "reason": e["reason"]} if "reason" in e else step)
        if e["event"] == "candidate":
            v["status"] = "candidate" if (e.get("gate") or {}).get("promote", True) else "refused"
        elif e["event"] in ("live", "registered"):
            v["status"], v["live_at"], v["replaced_at"] = "live", e["time"], None
        elif e["event"] in ("replaced", "rolled_back"):
            v["status"], v["replaced_at"] = e["event"], e["time"]
    return list(out.values())


def _read_local(uri: str) -> str:
    path = Path(storage.resolve_local(uri))
    return path.read_text(encoding="utf-8") if path.is_file() else ""


VERSION_COLUMNS = ["version", "status", "live_at", "replaced_at", "parent", "gate"]


def version_rows(versions: list[dict]) -> list[list[str]]:
    """One row per version, as ``lmforge models list`` and the update report show them."""
    rows = []
    for v in versions:
        gate = v.get("gate")
        word = "" if gate is None else ("promote" if gate["promote"] else "refused")
        rows.append([v["version"], v["status"] or "", v["live_at"] or "", v["replaced_at"] or "", v.get("parent") or "",
                     word])
    return rows
