"""The synthetic run's pieces: doc styles, the partly-right warm-up demonstrations, and one small
end-to-end run_synthetic (warm-up steps, then GRPO iterations through the real engine and train step)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from envtune_jax.chat import default_tokenizer
from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.synthetic import SyntheticConfig, SyntheticEpisode, make_synthetic_tasks, system_line
from envtune_jax.rl.synthetic_run import FOUR_VALUE_DEVICES, load_synthetic_recipe, run_synthetic
from envtune_jax.rl.warmup import demos_batch, weak_prior_demos

CONFIG = SyntheticConfig(devices=FOUR_VALUE_DEVICES, num_turns=2, doc_style="none")


def _assistant_texts(demo, tokenizer) -> list[str]:
    """The demonstrated assistant steps of one demonstration, as text."""
    ids, mask = demo.arrays()
    steps, current = [], []
    for token, trained in zip(ids, mask):
        if trained:
            current.append(int(token))
        elif current:
            steps.append(tokenizer.decode(current, skip_special_tokens=True))
            current = []
    if current:
        steps.append(tokenizer.decode(current, skip_special_tokens=True))
    return steps


def test_doc_styles_change_only_the_prompt_preamble():
    task = make_synthetic_tasks(1, CONFIG, seed=0)[0]
    bare = SyntheticEpisode(task, CONFIG)
    assert bare.tools() == [] and [m["role"] for m in bare.reset()] == ["user"]
    system_cfg = SyntheticConfig(devices=FOUR_VALUE_DEVICES, num_turns=2, doc_style="system")
    messages = SyntheticEpisode(task, system_cfg).reset()
    assert [m["role"] for m in messages] == ["system", "user"] and messages[0]["content"] == system_line(system_cfg)
    assert "light (red, green, blue, white)" in messages[0]["content"]
    with pytest.raises(ValueError, match="doc_style"):
        SyntheticConfig(doc_style="yaml")


@pytest.mark.parametrize("value_accuracy", [0.0, 1.0])
def test_weak_prior_demos_name_the_requested_device(value_accuracy):
    tokenizer, chat = default_tokenizer(), ChatConfig()
    tasks = make_synthetic_tasks(40, CONFIG, seed=3)
    episodes = [SyntheticEpisode(t, CONFIG, EnvironmentConfig.training(augmented=True)) for t in tasks]
    demos = weak_prior_demos(
        episodes, tokenizer, chat, device_accuracy=1.0, value_accuracy=value_accuracy, rng=random.Random(0)
    )
    values_right = []
    for task, episode, demo in zip(tasks, episodes, demos):
        steps = _assistant_texts(demo, tokenizer)
        assert steps[1::2] == [""] * len(task.turns)  # each call is followed by an empty reply
        calls = [step.split() for step in steps[0::2]]
        assert [c[0] for c in calls] == [device for device, _ in task.turns]
        values_right += [c[1] == value for c, (_, value) in zip(calls, task.turns)]
        assert episode.done  # the demonstration was played through the episode to its end
        if value_accuracy == 1.0:
            assert episode.outcome().reward == 1.0
    if value_accuracy == 1.0:
        assert all(values_right)
    else:  # values drawn uniformly from 4: right about a quarter of the time, never always
        assert 0.1 < np.mean(values_right) < 0.45
    batch = demos_batch(demos)
    assert batch.tokens_bt.shape[0] == len(demos)


@pytest.mark.parametrize("augmented", [True, False])
def test_misspelt_demonstrations_get_feedback_and_a_retry_only_when_augmented(augmented):
    tokenizer, chat = default_tokenizer(), ChatConfig()
    tasks = make_synthetic_tasks(30, CONFIG, seed=5)
    episodes = [SyntheticEpisode(t, CONFIG, EnvironmentConfig.training(augmented=augmented)) for t in tasks]
    demos = weak_prior_demos(episodes, tokenizer, chat, 1.0, 1.0, random.Random(1), syntax_accuracy=0.0, max_attempts=2)
    for task, episode, demo in zip(tasks, episodes, demos):
        steps = _assistant_texts(demo, tokenizer)
        counters = episode.outcome().counters
        assert episode.done and episode.outcome().reward == 0.0  # never spelt right: no turn is won
        if augmented:  # format feedback keeps the turn open: two misspelt attempts, then an empty reply
            assert len(steps) == 3 * len(task.turns) and steps[2::3] == [""] * len(task.turns)
            assert counters["format_errors"] == 2 * len(task.turns)
        else:  # without feedback a misspelt step ends the turn
            assert len(steps) == len(task.turns) and counters["format_errors"] == len(task.turns)
        for attempt in (s for s in steps if s):
            tool, value, extra = attempt.split()
            assert (tool, value) in task.turns and extra in ("please", "now")


def test_weak_prior_demos_reject_probabilities_outside_0_1():
    with pytest.raises(ValueError, match="value_accuracy"):
        weak_prior_demos([], default_tokenizer(), ChatConfig(), 1.0, 1.5, random.Random(0))


def test_run_synthetic_end_to_end_small(tmp_path):
    recipe = load_synthetic_recipe(
        [
            "tasks.count=8",
            "warmup.steps=2",
            "warmup.batch=4",
            "stage.max_steps=2",
            "stage.prompts_per_step=2",
            "stage.samples_per_prompt=2",
            "run.sampler.batch_size=4",
            "run.sampler.max_cache_len=128",
            "run.rollout.max_response_tokens=128",
            "run.rollout.max_context_tokens=128",
        ]
    )
    seen = []
    result = run_synthetic(recipe, tmp_path, on_step=lambda step, record: seen.append(step))
    assert seen == [0, 1] and [r["step"] for r in result.history] == [1, 2]  # records: optimizer steps taken
    for record in result.history:
        assert 0.0 <= record["reward_mean"] <= 1.0 and np.isfinite(record["loss"])
        assert record["sampled_tokens"] > 0
    assert np.isfinite(result.warmup["nll"])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
