"""Config of the ``import`` stage."""

from __future__ import annotations

import dataclasses

from lmforge.config import check
from lmforge.stages import StageConfig


@dataclasses.dataclass(kw_only=True)
class ImportConfig(StageConfig):
    """output: the HF model dir to write."""

    source: str  # an HF model dir or a .gguf file (local path, pkg://package/path or s3://)

    def __post_init__(self):
        check(bool(self.source), "source", "must be an HF model dir or a .gguf file")
