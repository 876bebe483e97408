"""A run directory's settings checks, made before any model loads: a resume with other settings is refused
unless allowed (runtime settings excepted), every set of settings is kept with the step it started at,
a finished run is recognised."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from envtune_jax.rl.run_config import load_run_config
from envtune_jax.rl.run_dir import (
    SettingsChanged,
    inspect_run_dir,
    mark_finished,
    record_settings,
    run_settings,
    settings_changes,
    settings_history,
)

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "tiny_cpu.yaml"
TWO_STAGES = "stages=[../stages/stage1_syntax.yaml,../stages/stage2_hints.yaml]"


def _config(run_dir: Path, *overrides: str):
    return load_run_config(RECIPE, [f"run_dir={run_dir}", TWO_STAGES, *overrides])


def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path):
    cfg, stages = _config(tmp_path)
    record_settings(tmp_path, cfg, stages, 0)
    assert inspect_run_dir(tmp_path, cfg, stages, [], allow_change=False).latest_checkpoint is None
    changed, changed_stages = _config(
        tmp_path,
        "seed=1",
        "optimizer.learning_rate=2e-4",
        "data.limit_per_category=3",
        "stage_overrides=[max_steps=3,rollout.max_response_tokens=1024,"
        "prompts_per_step=1,samples_per_prompt=2,validation_every=0,advance.kind=fixed]",
    )
    assert inspect_run_dir(tmp_path, changed, changed_stages, [], allow_change=False).changes == ()  # nothing trained
    with pytest.raises(SettingsChanged) as refused:
        inspect_run_dir(tmp_path, changed, changed_stages, [4], allow_change=False)
    message = str(refused.value)
    assert "\n" not in message and "--allow-config-change" in message
    assert "optimizer.learning_rate: 0.0001 → 0.0002" in message and "seed: 0 → 1" in message
    assert "stage stage1_syntax max_steps: 1 → 3" in message and "and 1 more" in message  # (stage2's max_steps)
    assert "data.limit_per_category: 2 → 3" in message
    allowed = inspect_run_dir(tmp_path, changed, changed_stages, [4], allow_change=True)
    assert allowed.latest_checkpoint == 4 and len(allowed.changes) == 5


def test_runtime_settings_may_change_on_resume(tmp_path):
    cfg, stages = _config(tmp_path)
    record_settings(tmp_path, cfg, stages, 0)
    moved, moved_stages = _config(
        tmp_path / "elsewhere",
        "mesh.fsdp=2",
        "mesh.data=-1",
        "checkpoint.keep=9",
        "logging.tensorboard=false",
        "model.attention_impl=reference",
        "model.remat=full",
    )
    assert inspect_run_dir(tmp_path, moved, moved_stages, [3], allow_change=False).changes == ()


def test_a_changed_stage_list_is_a_change(tmp_path):
    cfg, stages = _config(tmp_path)
    record_settings(tmp_path, cfg, stages, 0)
    one, one_stage = load_run_config(RECIPE, [f"run_dir={tmp_path}", "stages=[../stages/stage1_syntax.yaml]"])
    assert settings_changes(run_settings(cfg, stages), run_settings(one, one_stage)) == [
        "stages: ['stage1_syntax', 'stage2_hints'] → ['stage1_syntax']"
    ]


def test_each_set_of_settings_is_kept_with_the_step_it_started_at(tmp_path):
    cfg, stages = _config(tmp_path)
    record_settings(tmp_path, cfg, stages, 0)
    record_settings(tmp_path, cfg, stages, 5)  # same settings: nothing new
    changed, changed_stages = _config(tmp_path, "optimizer.learning_rate=2e-4")
    record_settings(tmp_path, changed, changed_stages, 5)
    assert [step for step, _ in settings_history(tmp_path)] == [0, 5]
    kept = yaml.safe_load((tmp_path / "configs" / "config.step5.yaml").read_text())
    assert kept["started_at_step"] == 5 and kept["run"]["optimizer"]["learning_rate"] == 2e-4
    assert [stage["name"] for stage in kept["stages"]] == ["stage1_syntax", "stage2_hints"]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optimizer"]["learning_rate"] == 2e-4
    # against the settings in force at the checkpoint resumed from
    assert inspect_run_dir(tmp_path, changed, changed_stages, [7], allow_change=False).changes == ()
    assert inspect_run_dir(tmp_path, cfg, stages, [3], allow_change=False).changes == ()
    # a resume from step 3 discards steps 4..: the settings started at 5 go with them
    record_settings(tmp_path, cfg, stages, 3)
    assert [step for step, _ in settings_history(tmp_path)] == [0]


def test_a_finished_run_is_recognised_with_its_own_settings_only(tmp_path):
    cfg, stages = _config(tmp_path)
    record_settings(tmp_path, cfg, stages, 0)
    mark_finished(tmp_path, 2, stages)
    start = inspect_run_dir(tmp_path, cfg, stages, [1, 2], allow_change=False)
    assert start.finished["step"] == 2 and start.finished["stages"] == ["stage1_syntax", "stage2_hints"]
    assert inspect_run_dir(tmp_path, cfg, stages, [], allow_change=False).finished is not None  # checkpoints deleted
    more = dataclasses.replace(stages[1], name="stage3_more")
    assert inspect_run_dir(tmp_path, cfg, [*stages, more], [2], allow_change=True).finished is None  # goes on


def test_rewrite_final_on_a_run_that_is_not_finished_is_refused_before_anything_loads(tmp_path, capsys):
    from envtune_jax.cli.main import main

    assert main(["train", "--config", str(RECIPE), f"run_dir={tmp_path / 'run'}", TWO_STAGES, "--rewrite-final"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--rewrite-final:" in err and "holds no finished run" in err


def test_settings_are_kept_and_compared_as_the_saved_config_holds_them(tmp_path):
    from envtune_jax.config import load
    from envtune_jax.rl.run_config import RunConfig

    cfg, stages = _config(tmp_path, "loss.kl_coef=0")  # the KL estimator is then not read
    record_settings(tmp_path, cfg, stages, 0)
    kept = yaml.safe_load((tmp_path / "configs" / "config.step0.yaml").read_text())
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "kl_estimator" not in kept["run"]["loss"] and "kl_estimator" not in saved["loss"]
    assert kept["run"] == {key: value for key, value in saved.items() if key not in ("stages", "stage_overrides")}
    assert load(RunConfig, tmp_path / "config.yaml") == cfg  # config.yaml loads back: its mode reads every field
    assert inspect_run_dir(tmp_path, cfg, stages, [2], allow_change=False).changes == ()
