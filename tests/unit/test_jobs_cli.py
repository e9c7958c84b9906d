"""What `lmforge submit` sends, before any cluster is involved: the job's command line, the runtime
env that carries this project, and where the token comes from."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from lmforge.cli import submit as jobs


def test_entrypoint_runs_the_stage_with_the_config_relative_to_the_shipped_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "x.yaml").write_text("{}")
    line = jobs.entrypoint("run", str(tmp_path / "jobs" / "x.yaml"), ["prompts=[The river, a b]", "max_tokens=8"])
    assert shlex.split(line) == ["python", "-m", "lmforge", "run", "jobs/x.yaml", "prompts=[The river, a b]",
                                 "max_tokens=8"]
    with pytest.raises(jobs.SubmitError, match="must be inside the current directory"):
        jobs.entrypoint("run", "/etc/hostname", [])


def test_runtime_env_ships_this_dir_and_the_package_but_no_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    env = jobs.runtime_env()
    assert env["working_dir"] == str(tmp_path) and "runs" in env["excludes"]
    assert Path(env["py_modules"][0]).name == "lmforge" and (Path(env["py_modules"][0]) / "stages.py").is_file()
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"


def test_token_source_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert jobs.token_source() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t")
    assert jobs.token_source() == str(tmp_path / ".ray" / "auth_token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t2")
    assert jobs.token_source() == "RAY_AUTH_TOKEN"


def test_a_recipe_is_submitted_by_its_file_and_checked_section_by_section_first(capsys):
    """`lmforge submit jobs/quickstart.yaml` is `lmforge submit run jobs/quickstart.yaml`; a typo in any
    stage's section stops it before any cluster is contacted (none listens at this address)."""
    from lmforge.cli import submit as jobs

    status = jobs.main(["submit", "jobs/quickstart.yaml", "pretrain.train.lrr=0.1", "--address",
                        "http://127.0.0.1:9"])
    assert status == 2 and "pretrain.train.lrr: unknown key (did you mean pretrain.train.lr?)" in \
        capsys.readouterr().err


def test_submit_takes_a_stages_flags_as_the_stage_does(capsys):
    """`lmforge submit run RECIPE --force pretrain` forces pretrain on the cluster, as `lmforge run` would
    (it once went to argparse's leftovers and was dropped); --dry-run shows what would be submitted."""
    from lmforge.cli.args import parse

    parsed = parse("run", ["jobs/quickstart.yaml", "--force", "pretrain"])
    assert "pretrain.force=true" in shlex.split(jobs.entrypoint("run", parsed.path, parsed.overrides))
    assert jobs.main(["submit", "run", "jobs/quickstart.yaml", "--force", "pretrain", "--dry-run", "--address",
                      "http://127.0.0.1:9"]) == 0
    import yaml

    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["pretrain"]["force"] is True and shown["finetune"]["force"] is False
    assert jobs.main(["submit", "jobs/quickstart.yaml", "--force", "serve"]) == 2  # serve writes nothing to redo
    assert jobs.main(["submit", "pretrain", "--dry-runn"]) == 2
    assert "did you mean --dry-run" in capsys.readouterr().err
