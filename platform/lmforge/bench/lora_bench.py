"""``lmforge bench serve adapters=[...]``: LoRA adapters served beside their base, against a merged model.

The top concurrency level again with its streams spread over the adapters (client ``i`` asks for
``<model>:<adapter i mod n>``, so every batch mixes them) and on the base alone through the same LoRA
graph (the adapter path's own cost with no adapter in the batch); then, with ``merged_model``, one
adapter merged into the base and exported on its own, served alone at that level: the tokens/s ratio,
and the model replicas' resident memory against the merged one's plus the adapters' weights.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from lmforge.bench.config import ServeBenchConfig
from lmforge.bench.load import run_load


def mixed(url: str, cfg: ServeBenchConfig, key: str | None, prompt: str) -> dict:
    top = max(cfg.concurrency)
    extra = {"temperature": 0, "extra_body": {"min_tokens": cfg.max_tokens}}

    def level(models) -> dict:
        return asyncio.run(run_load(url, models, key, concurrency=top, duration_s=cfg.duration_s, prompt=prompt,
                                    max_tokens=cfg.max_tokens, stream=cfg.stream, extra=extra, max_retries=0)).summary()

    return {f"concurrency_{top}": {"mixed_adapters": level([f"{cfg.model_name}:{a}" for a in cfg.adapters]),
                                   "base_on_the_lora_graph": level(cfg.model_name)}}


def replica_rss_bytes() -> int | None:
    """Resident memory of this node's model replicas (Serve's replica actors), from /proc; None off Linux."""
    from ray.util.state import list_actors

    total = 0
    for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
        if actor.class_name.startswith("ServeReplica:") and ":model-" in actor.class_name and actor.pid:
            status = Path(f"/proc/{actor.pid}/status")
            if not status.is_file():
                return None
            kb = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
            total += int(kb) * 1024
    return total


def adapter_bytes(model_dir: Path, names: list[str]) -> int:
    return sum((model_dir / "adapters" / n / "adapter_model.safetensors").stat().st_size for n in names)


def compare(result: dict, merged: dict, model_dir: Path, cfg: ServeBenchConfig) -> dict:
    """The mixed-adapter level over the merged model's, and memory over merged + adapters."""
    top = f"concurrency_{max(cfg.concurrency)}"
    ours, theirs = result["adapters"][top]["mixed_adapters"], merged["levels"][top]
    out = {"merged_model": cfg.merged_model, "merged": theirs,
           "tokens_per_s_ratio_mixed_over_merged": ours["tokens_per_s"] / theirs["tokens_per_s"]}
    rss, base = result["setup"].get("replica_rss_bytes"), merged["setup"].get("replica_rss_bytes")
    if rss and base:
        weights = adapter_bytes(model_dir, cfg.adapters)
        out["memory"] = {"replica_rss_bytes": rss, "merged_replica_rss_bytes": base, "adapter_bytes": weights,
                         "ratio_over_merged_plus_adapters": rss / (base + weights)}
    return out
