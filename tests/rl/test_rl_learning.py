"""The proof that the RL loop learns: the default synthetic run (rl/synthetic_run.py, configs/synthetic/), end to end.

A tiny random Qwen3 (Qwen's tokenizer cut to 8,192 BPE ranks) is warmed up on demonstrations that call
the requested device with the requested value but spell 19 calls in 20 as format errors ("light red
please"); GRPO through the real rollout, environment and train-step code must then raise the mean
episode reward from ≤ 0.2 to ≥ 0.8. About 3-4 minutes on 2 CPU cores, so `make test` deselects it
(marker `learning`); `make test-learning` and CI run it.
"""

from __future__ import annotations

import json

import pytest

from envtune_jax.rl.synthetic_run import load_synthetic_recipe, run_synthetic

pytestmark = pytest.mark.learning


def test_default_synthetic_run_raises_the_reward_from_at_most_0_2_to_at_least_0_8(tmp_path):
    recipe = load_synthetic_recipe()
    result = run_synthetic(recipe, tmp_path)
    rewards = [record["reward_mean"] for record in result.history]
    assert len(rewards) == recipe.stage.max_steps
    assert sum(rewards[:2]) / 2 <= 0.2, rewards
    assert sum(rewards[-5:]) / 5 >= 0.8, rewards
    # the curve docs/training.md plots is the one written to metrics.jsonl
    logged = [json.loads(line)["reward_mean"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx(rewards)
