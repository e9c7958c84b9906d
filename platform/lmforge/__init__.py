"""lmforge: a Ray-based platform from raw text corpus to a served language model.

Stages (each ``lmforge <stage> CONFIG.yaml key=value ...``): prepare, pretrain, export, serve, and
``run`` for a recipe that chains them. See README.md and DESIGN.md.
"""

__version__ = "0.1.0"
