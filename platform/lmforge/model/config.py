"""Config of the ``import`` stage."""

from __future__ import annotations

import dataclasses

from lmforge.config import check


@dataclasses.dataclass(kw_only=True)
class ImportConfig:
    source: str  # an HF model dir or a .gguf file (local path or pkg://package/path)
    output: str  # the HF model dir to write
    force: bool = False  # redo even when output holds a finished import of the same config

    def __post_init__(self):
        check(bool(self.source), "source", "must be an HF model dir or a .gguf file")
