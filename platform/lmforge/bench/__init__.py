"""Benchmarks (``lmforge bench <name> key=value ...``): speed targets measured on real stages, JSON out."""

import json
from pathlib import Path


def write_result(result: dict, output: str | None) -> dict:
    """Write a bench's JSON result to ``output`` (when set, creating its folder); returns the result."""
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2))
    return result
