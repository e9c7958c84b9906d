"""``lmforge run``: a recipe of stages (config in :mod:`.config`, execution in :mod:`.runner`)."""
