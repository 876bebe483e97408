"""The stage budget (epochs over the stage's data, capped by max_steps), the stage-advance rule, and the
shipped stage configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from envtune_jax.config import ConfigError, load
from envtune_jax.rl.curriculum import (
    AdvanceRule,
    StageConfig,
    check_plateau_can_fire,
    decide_advance,
    plateau_first_step,
    stage_budget,
)
from envtune_jax.rl.run_config import load_run_config, stage_budgets

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER_RECIPE = CONFIGS / "recipes" / "qwen3_4b_instruct_2507.yaml"


def test_fixed_budget():
    stage = StageConfig(max_steps=5)
    assert not decide_advance(stage, 5, 4, [], []).advance
    assert decide_advance(stage, 5, 5, [], []).advance


def test_plateau_needs_flat_accuracy_and_stable_gradients():
    stage = StageConfig(advance=AdvanceRule(kind="plateau", patience=2, min_delta=0.01, grad_norm_window=4))
    stable, spiky = [1.0, 1.1, 0.9, 1.0], [0.1, 3.0, 0.2, 5.0]
    assert not decide_advance(stage, 100, 20, [0.1, 0.2, 0.3, 0.4], stable).advance  # improving
    flat = [0.1, 0.4, 0.4, 0.405]
    decision = decide_advance(stage, 100, 20, flat, spiky)
    assert not decision.advance and "unstable" in decision.reason
    decision = decide_advance(stage, 100, 20, flat, stable)
    assert decision.advance and "plateaued" in decision.reason


def test_the_budget_is_stated_in_epochs_and_max_steps_may_cap_it():
    stage = StageConfig(data="stage1_easy", prompts_per_step=16)  # default: 20 epochs
    budget = stage_budget(stage, 76)
    assert (budget.steps, budget.binding) == (95, "epochs")  # 20 x 76 / 16
    assert budget.epochs_covered(16) == pytest.approx(20.0)
    capped = stage_budget(StageConfig(data="stage1_easy", prompts_per_step=16, max_steps=40), 76)
    assert (capped.steps, capped.binding, capped.epoch_steps) == (40, "max_steps", 95)
    assert capped.epochs_covered(16) == pytest.approx(8.42, abs=0.01)  # the old stage-1 cap
    # a cap above the epoch budget does not bind; whole batches only, never more than the epochs asked for
    assert stage_budget(StageConfig(prompts_per_step=32, max_steps=1000), 100).steps == 62
    assert stage_budget(StageConfig(prompts_per_step=32, epochs=0.5), 100).steps == 1


def test_shipped_recipe_stages_train_20_epochs_and_can_plateau_in_every_stage():
    cfg, stages = load_run_config(PAPER_RECIPE)
    budgets = stage_budgets(cfg, stages)
    assert [b.data_size for b in budgets] == [76, 100, 400, 400]
    assert [b.steps for b in budgets] == [95, 62, 250, 250]
    for stage, budget in zip(stages, budgets):
        assert budget.binding == "epochs" and stage.epochs == 20
        assert 19.5 < budget.epochs_covered(stage.prompts_per_step) <= 20
        assert stage.advance.kind == "plateau" and plateau_first_step(stage) < budget.steps


def test_a_budget_the_plateau_rule_cannot_fire_in_is_rejected():
    # the old stage 1: 40 steps, validation every 10, patience 3 -> the rule needs 40 steps: it never fires
    old_stage1 = StageConfig(
        name="stage1_syntax",
        data="stage1_easy",
        max_steps=40,
        prompts_per_step=16,
        validation_every=10,
        advance=AdvanceRule(kind="plateau"),
    )
    assert plateau_first_step(old_stage1) == 40
    with pytest.raises(ConfigError, match=r"stage1_syntax.*after 40 steps.*ends the stage after 40.*max_steps"):
        check_plateau_can_fire(old_stage1, stage_budget(old_stage1, 76))
    with pytest.raises(ConfigError, match="max_steps"):
        load_run_config(PAPER_RECIPE, ["stage_overrides=[max_steps=40]"])
    with pytest.raises(ConfigError, match="validation_every"):
        StageConfig(validation_every=0, advance=AdvanceRule(kind="plateau"))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("stages/*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_stage_config_loads(path):
    stage = load(StageConfig, path)
    assert stage.epochs == 20 and stage.max_steps is None and stage.samples_per_prompt > 0
