"""`lmforge <stage> --help`: every key of every registered stage and bench, documented, without running."""

import dataclasses
import subprocess
import sys

import pytest

from lmforge import cli, help
from lmforge.bench import BENCHES
from lmforge.config import dotted_keys
from lmforge.stages import STAGES

COMMANDS = [(name, [name], stage) for name, stage in STAGES.items()]
COMMANDS += [(f"bench {name}", ["bench", name], bench) for name, bench in BENCHES.items()]


@pytest.mark.parametrize("command, argv, stage", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_help_lists_every_key_with_type_default_and_description(command, argv, stage, capsys):
    assert cli.main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lmforge {command} ") and stage.summary in out
    keys = dotted_keys(stage.config_class())
    undocumented = [d.key for d in help.key_docs(stage.config_class()) if not d.description]
    assert not undocumented, f"keys without a description in their config class: {undocumented}"
    for key in keys:
        assert f"  {key} " in out, key


def test_help_text_carries_type_default_and_the_field_comment():
    from lmforge.data.config import PrepareConfig

    docs = {d.key: d for d in help.key_docs(PrepareConfig)}
    seq_len = docs["pack.seq_len"]
    assert (seq_len.type, seq_len.default, seq_len.section) == ("int", "256", "pack")
    assert seq_len.description == "tokens per packed row (the model's context in pretraining)"
    assert docs["inputs"].default == help.REQUIRED and docs["inputs"].type == "list[str]"
    assert docs["ray.address"].type == "str | null"


def test_help_imports_no_ray_torch_or_stage_code():
    """--help must answer at once: it imports the config class and nothing that starts or loads models."""
    code = ("import sys; from lmforge import cli; cli.main(['pretrain', '--help']); cli.main(['bench', 'train', '-h']);"
            "cli.main(['run', '--help']); heavy = ('ray', 'torch', 'transformers', 'pyarrow', 'lmforge.train.launch');"
            "loaded = [m for m in heavy if m in sys.modules]; assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


def test_every_registered_stage_imports():
    for stage in [*STAGES.values(), *BENCHES.values()]:
        assert dataclasses.is_dataclass(stage.config_class()) and callable(stage.run_fn()), stage.name


def test_run_force_names_a_stage_and_becomes_its_override():
    from lmforge.cli.args import force_to_overrides

    assert force_to_overrides(["--force", "pretrain", "jobs/quickstart.yaml", "output=x"]) == \
        ["jobs/quickstart.yaml", "output=x", "pretrain.force=true"]
    assert force_to_overrides(["jobs/quickstart.yaml", "--force=export"]) == \
        ["jobs/quickstart.yaml", "export.force=true"]
    assert force_to_overrides(["jobs/quickstart.yaml", "--force", "serve"]) == 2  # serve writes nothing to redo
    assert force_to_overrides(["jobs/quickstart.yaml", "--force", "pretrian"]) == 2
