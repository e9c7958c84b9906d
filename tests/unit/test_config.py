"""Config loading: YAML + dotted overrides, strict keys, typed values, errors naming the key."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from lmforge import cli
from lmforge import config as cfgmod
from lmforge.config import ConfigError
from lmforge.data.config import PrepareConfig
from lmforge.recipe.config import RecipeConfig
from lmforge.recipe.runner import resolve
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


@pytest.mark.parametrize("override, message", [
    ("pack.seq_len=abc", "pack.seq_len: expected an integer, got 'abc'"),
    ("pack.seq_len=2", "pack.seq_len: must be >= 8"),
    ("pack.val_fraction=1.5", "pack.val_fraction: must be in [0, 1)"),
    ("tokenizer.vocab_size=100", "tokenizer.vocab_size: must be >= 300 (256 bytes + specials)"),
    ("dedup.ngram=0", "dedup.ngram: must be >= 1"),
    ("quality.min_alpha_word_fraction=2", "quality.min_alpha_word_fraction: must be in [0, 1]"),
    ("force=yes please", "force: expected true/false, got 'yes please'"),
    ("inputs=a.jsonl", "inputs: expected a list, got 'a.jsonl'"),
])
def test_bad_values_name_the_key_once(override, message):
    """The whole message: a nested check used to name its key twice (pack.pack.seq_len)."""
    with pytest.raises(ConfigError) as err:
        cfgmod.load(PrepareConfig, None, ["inputs=[a]", "output=o", override])
    assert str(err.value) == message


def test_misspelt_keys_suggest_the_nearest():
    with pytest.raises(ConfigError) as err:
        cfgmod.load(PretrainConfig, None, ["data=d", "output=o", "train.lrr=0.1"])
    assert str(err.value) == "train.lrr: unknown key (did you mean train.lr?)"
    with pytest.raises(ConfigError, match=r"seq_len: unknown key \(did you mean pack\.seq_len\?\)"):
        cfgmod.load(PrepareConfig, None, ["inputs=[a]", "output=o", "seq_len=64"])


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
    assert list(stages) == ["prepare", "pretrain", "export", "serve"]
    assert stages["prepare"].output == "runs/x/data"
    assert stages["pretrain"].data == "runs/x/data"
    assert stages["export"].model == "runs/x/train/model"
    assert stages["serve"].model == "runs/x/onnx"
    bad = cfgmod.load(RecipeConfig, None, ["output=runs/x", "prepare.inputs=[a]", "pretrain.train.max_stepz=3"])
    with pytest.raises(ConfigError) as err:
        resolve(bad)
    assert str(err.value) == "pretrain.train.max_stepz: unknown key (did you mean pretrain.train.max_steps?)"
    with pytest.raises(ConfigError, match=r"^prepare\.pack\.seq_len: must be >= 8$"):
        resolve(cfgmod.load(RecipeConfig, None, ["output=x", "prepare.inputs=[a]", "prepare.pack.seq_len=2"]))


def test_recipe_wiring_follows_the_stages_it_runs():
    """export reads the model of whichever training stage the recipe runs; a section's own key wins."""
    recipe = cfgmod.load(RecipeConfig, None, ["output=r", "stages=[import,export]", "import.source=m.gguf"])
    stages = resolve(recipe)
    assert stages["import"].output == "r/import" and stages["export"].model == "r/import"
    own = cfgmod.load(RecipeConfig, None, ["output=r", "stages=[export]", "export.model=elsewhere"])
    assert resolve(own)["export"].model == "elsewhere"
    with pytest.raises(ConfigError, match=r"^stages: unknown stage 'bake'"):
        cfgmod.load(RecipeConfig, None, ["output=r", "stages=[prepare,bake]"])


def test_recipe_sections_come_from_the_registry():
    from lmforge.stages import recipe_stages

    fields = {cfgmod.key_of(f) for f in dataclasses.fields(RecipeConfig)}
    assert {s.name for s in recipe_stages()} <= fields


def test_cli_exits_2_naming_the_bad_key(capsys):
    assert cli.main(["prepare", "inputs=[a]", "output=o", "pack.seq_len=x"]) == 2
    assert capsys.readouterr().err == "lmforge prepare: config error: pack.seq_len: expected an integer, got 'x'\n"
    assert cli.main(["pretrain", "data=d", "output=o", "train.lrr=0.1"]) == 2
    assert "did you mean train.lr?" in capsys.readouterr().err


def test_cli_dry_run_prints_the_whole_resolved_config(capsys):
    assert cli.main(["pretrain", "data=d", "output=o", "train.num_workers=2", "--dry-run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == cfgmod.to_dict(cfgmod.load(PretrainConfig, None, ["data=d", "output=o", "train.num_workers=2"]))
    assert printed["train"]["num_workers"] == 2 and printed["model"]["preset"] == "tiny"


def test_cli_dry_run_of_a_recipe_shows_every_stage_resolved(capsys):
    assert cli.main(["run", "output=r", "prepare.inputs=[a.jsonl]", "--dry-run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["pretrain"]["data"] == "r/data" and printed["pretrain"]["train"]["max_steps"] == 200


def test_cli_unknown_stage_and_unknown_flag(capsys):
    assert cli.main(["bake"]) == 2
    assert cli.main(["prepar"]) == 2 and "did you mean prepare?" in capsys.readouterr().err
    assert cli.main(["prepare", "--hepl"]) == 2
    assert capsys.readouterr().err == "lmforge prepare: unknown option --hepl (did you mean --help?)\n"


JOBS = sorted((Path(__file__).resolve().parents[2] / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_every_job_recipe_validates(path, capsys):
    """Each file under jobs/ says how it runs (`lmforge <stage> jobs/<file>`); that command validates it."""
    import re

    stage = re.search(rf"lmforge (?!submit )(\w+) jobs/{path.name}", path.read_text()).group(1)  # not a job
    assert cli.main([stage, str(path), "--dry-run"]) == 0, capsys.readouterr().err


def test_gpu_recipe_is_the_quickstart_sized_for_gpus():
    """The same lifecycle as the demo, on 8 GPU workers, on object storage; `{stage}` in a section names that
    stage's output (eval's models, the canary audit's corpus); finetune adapts the imported model, not the
    one pretrained before it, and export serves its adapter beside that model."""
    jobs = Path(__file__).resolve().parents[2] / "jobs"
    cpu = resolve(cfgmod.load(RecipeConfig, str(jobs / "quickstart.yaml"), ["output=runs/q"]))
    gpu = resolve(cfgmod.load(RecipeConfig, str(jobs / "quickstart_gpu.yaml"), []))
    assert list(cpu) == list(gpu) == ["prepare", "tune", "pretrain", "import", "finetune", "export", "eval", "serve"]
    assert (gpu["pretrain"].train.strategy, gpu["finetune"].finetune.method) == ("fsdp", "lora")
    for name in ("pretrain", "finetune"):
        t = gpu[name].train
        assert (t.use_gpu, t.num_workers) == (True, 8) and t.max_failures >= 1
    for recipe in (cpu, gpu):  # the sweep's trials: pretraining, shortened; their data is prepare's
        assert recipe["tune"].stage == "pretrain" and recipe["tune"].base["data"] == recipe["pretrain"].data
        assert recipe["tune"].base["train"]["max_steps"] < recipe["pretrain"].train.max_steps
    trial = gpu["tune"].base["train"]
    assert (trial["use_gpu"], trial["num_workers"], trial["strategy"]) == (True, 2, "ddp")
    assert gpu["prepare"].output.startswith("s3://")
    assert cpu["finetune"].model.init_from == cpu["import"].output == cpu["export"].model == "runs/q/import"
    assert cpu["export"].adapters == ["nq=runs/q/finetune/adapter"] and cpu["export"].quantize == "int8"
    assert cpu["eval"].models == {"base": "runs/q/onnx", "tuned": "runs/q/onnx/adapters/nq",
                                  "scratch": "runs/q/train/model"}
    canary = next(t for t in cpu["eval"].tasks if not isinstance(t, str) and t.name == "canary")
    assert canary.data == "runs/q/data"
    assert cpu["serve"].model == "runs/q/onnx"


def test_a_union_says_why_the_alternative_that_took_the_value_refused_it(capsys):
    """`tasks` is `str | TaskSpec`: a mapping with an unknown metric is a TaskSpec with a wrong metric, and
    the error says so, not only that it matches neither."""
    from lmforge import cli

    args = ["eval", "model=m", "output=o", "tasks=[{name: a, data: x.jsonl, metrics: [bleu, rouge]}]", "--dry-run"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "tasks[0].metrics: unknown metric 'rouge' (known: rouge1, rouge2, rougeL" in err, err
    assert cli.main(["eval", "model=m", "output=o", "tasks=[[a]]", "--dry-run"]) == 2  # neither shape: both named
    assert "tasks[0]: ['a'] matches none of" in capsys.readouterr().err
