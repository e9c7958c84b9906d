"""lmforge: a Ray-based platform from raw text corpus to a served language model.

Stages (each ``lmforge <stage> CONFIG.yaml key=value ...``) are listed once, in :mod:`lmforge.stages`;
``lmforge --help`` prints them and ``lmforge <stage> --help`` every key of one. See README.md.
"""

__version__ = "0.1.0"
