"""Config of the ``export`` stage."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lmforge.config import check


@dataclasses.dataclass(kw_only=True)
class ExportConfig:
    model: str  # an HF model dir (pretrain's output/model)
    output: str
    quantize: Literal["none"] = "none"  # int8 / int4 arrive with the KV-cache export
    opset: int = 17
    parity_atol: float = 1e-3  # max |logits_onnx - logits_torch| allowed in fp32
    parity_batch: int = 2
    parity_seq_len: int = 32
    force: bool = False

    def __post_init__(self):
        check(self.opset >= 14, "opset", "must be >= 14")
        check(self.parity_atol > 0, "parity_atol", "must be > 0")
