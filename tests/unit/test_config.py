"""Config loading: YAML + dotted overrides, strict keys, typed values, errors naming the key."""

import dataclasses

import pytest

from lmforge import cli
from lmforge import config as cfgmod
from lmforge.config import ConfigError
from lmforge.data.config import PrepareConfig
from lmforge.recipe import RecipeConfig, resolve
from lmforge.train.config import PretrainConfig


def test_overrides_parse_as_yaml_into_nested_dicts():
    tree = cfgmod.parse_overrides(["a.b=3", "a.c=0.5", "inputs=[x.jsonl, y.jsonl]", "flag=true", "s=hi"])
    assert tree == {"a": {"b": 3, "c": 0.5}, "inputs": ["x.jsonl", "y.jsonl"], "flag": True, "s": "hi"}


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        cfgmod.parse_overrides(["pack.seq_len"])


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("inputs: [a.jsonl]\noutput: out\npack:\n  seq_len: 64\n  val_fraction: 0.1\n")
    cfg = cfgmod.load(PrepareConfig, path, ["pack.seq_len=128", "tokenizer.vocab_size=1000"])
    assert cfg.pack.seq_len == 128 and cfg.pack.val_fraction == 0.1
    assert cfg.tokenizer.vocab_size == 1000 and cfg.inputs == ["a.jsonl"]


def test_unknown_nested_key_names_the_dotted_key():
    with pytest.raises(ConfigError, match=r"pack\.seq_lenn"):
        cfgmod.load(PrepareConfig, None, ["inputs=[a]", "output=o", "pack.seq_lenn=3"])


@pytest.mark.parametrize("override, key", [
    ("pack.seq_len=abc", "pack.seq_len"),
    ("pack.seq_len=2", "pack.seq_len"),
    ("pack.val_fraction=1.5", "pack.val_fraction"),
    ("force=yes please", "force"),
    ("inputs=a.jsonl", "inputs"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfgmod.load(PrepareConfig, None, ["inputs=[a]", "output=o", override])


def test_missing_required_key():
    with pytest.raises(ConfigError, match="output: required"):
        cfgmod.load(PrepareConfig, None, ["inputs=[a]"])


def test_int_accepted_for_float_and_optional_none():
    cfg = cfgmod.load(PretrainConfig, None, ["data=d", "output=o", "train.lr=1", "model.init_from=null"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and cfg.model.init_from is None


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = cfgmod.load(PretrainConfig, None, ["data=d", "output=o", "train.max_steps=7"])
    path = cfgmod.write(cfg, tmp_path)
    again = cfgmod.load(PretrainConfig, path)
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_recipe_wires_paths_and_validates_every_stage():
    recipe = cfgmod.load(RecipeConfig, None, ["output=runs/x", "prepare.inputs=[a.jsonl]"])
    stages = resolve(recipe)
    assert stages.pretrain.data == "runs/x/data"
    assert stages.export.model == "runs/x/train/model"
    assert stages.serve.model == "runs/x/onnx"
    bad = cfgmod.load(RecipeConfig, None, ["output=runs/x", "prepare.inputs=[a]", "pretrain.train.max_stepz=3"])
    with pytest.raises(ConfigError, match=r"pretrain\.train\.max_stepz"):
        resolve(bad)


def test_cli_exits_2_naming_the_bad_key(capsys):
    assert cli.main(["prepare", "inputs=[a]", "output=o", "pack.seq_len=x"]) == 2
    assert "pack.seq_len" in capsys.readouterr().err


def test_cli_dry_run_prints_resolved_config(capsys):
    assert cli.main(["pretrain", "data=d", "output=o", "train.num_workers=2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "num_workers: 2" in out and "preset: tiny" in out


def test_cli_unknown_stage(capsys):
    assert cli.main(["bake"]) == 2


@pytest.mark.parametrize("name, stage", [("quickstart", "run"), ("prepare", "prepare"), ("pretrain", "pretrain"),
                                         ("export", "export"), ("serve", "serve"), ("import_smollm2", "import")])
def test_every_job_recipe_validates(name, stage, capsys):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "jobs" / f"{name}.yaml"
    assert cli.main([stage, str(path), "--dry-run"]) == 0, capsys.readouterr().err
