"""The stage-advance rule and the shipped stage configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from envtune_jax.config import load
from rl.curriculum import AdvanceRule, StageConfig, decide_advance

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_fixed_budget():
    stage = StageConfig(max_steps=5)
    assert not decide_advance(stage, 4, [], []).advance
    assert decide_advance(stage, 5, [], []).advance


def test_plateau_needs_flat_accuracy_and_stable_gradients():
    stage = StageConfig(max_steps=100, advance=AdvanceRule(kind="plateau", patience=2, min_delta=0.01, grad_norm_window=4))
    stable, spiky = [1.0, 1.1, 0.9, 1.0], [0.1, 3.0, 0.2, 5.0]
    assert not decide_advance(stage, 20, [0.1, 0.2, 0.3, 0.4], stable).advance  # improving
    flat = [0.1, 0.4, 0.4, 0.405]
    decision = decide_advance(stage, 20, flat, spiky)
    assert not decision.advance and "unstable" in decision.reason
    decision = decide_advance(stage, 20, flat, stable)
    assert decision.advance and "plateaued" in decision.reason


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("stages/*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_stage_config_loads(path):
    stage = load(StageConfig, path)
    assert stage.max_steps > 0 and stage.samples_per_prompt > 0
