"""``lmforge update`` (new data -> fine-tune the deployed model -> eval against it -> gate -> export ->
rolling switch -> probe -> rollback on failure) and ``lmforge models`` (the registry of served versions)."""

from lmforge.stages import Command

MODELS: dict[str, Command] = {c.name: c for c in (
    Command("list", "every version in the registry: status, when live, parent, the gate's word",
            "lmforge.update.config:ModelsConfig", "lmforge.update.models:list_versions"),
    Command("show", "one version (default: the live one), with its data, config, eval, gate and history",
            "lmforge.update.config:ModelsConfig", "lmforge.update.models:show"),
    Command("rollback", "switch the deployment back to a version (default: the one live before)",
            "lmforge.update.config:RollbackConfig", "lmforge.update.models:rollback"),
)}
