"""The synthetic task: exact text protocol, same reward machinery, low reward for random text, hints."""

from __future__ import annotations

import random

import pytest

from envtune_jax.environments.base import ToolCall
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.evaluation import run_episodes
from envtune_jax.environments.policies import DoNothingPolicy, OraclePolicy, PolicyStep
from envtune_jax.environments.synthetic import (
    SyntheticConfig,
    SyntheticEpisode,
    make_synthetic_tasks,
    parse_compact_calls,
    user_request,
)

CONFIG = SyntheticConfig(num_turns=3, chat_turn_probability=0.3)


class _RandomTextPolicy:
    """Each step: a few tokens drawn uniformly from `vocabulary` (a randomly initialised model's output)."""

    name = "random"

    def __init__(self, vocabulary, seed, max_words=3):
        self.vocabulary, self.rng, self.max_words = vocabulary, random.Random(seed), max_words

    def act(self, states):
        return [
            PolicyStep("".join(self.rng.choice(self.vocabulary) for _ in range(self.rng.randint(0, self.max_words))))
            for _ in states
        ]


def _episodes(tasks, hints=False):
    env_config = EnvironmentConfig.training(augmented=hints)
    return [SyntheticEpisode(task, CONFIG, env_config) for task in tasks]


def test_compact_syntax():
    names = ["light", "fan", "door"]
    assert parse_compact_calls("light red", names) == ([ToolCall("light", {"value": "red"})], [])
    assert parse_compact_calls("  fan   high\n", names) == ([ToolCall("fan", {"value": "high"})], [])
    assert parse_compact_calls("", names) == ([], []) and parse_compact_calls("ok thanks", names) == ([], [])
    calls, errors = parse_compact_calls("light", names)
    assert calls == [] and len(errors) == 1
    assert parse_compact_calls("light red now", names)[0] == []


def test_oracle_wins_and_do_nothing_only_wins_chat_turns():
    tasks = make_synthetic_tasks(50, CONFIG, seed=3)
    assert any(None in task.turns for task in tasks) and make_synthetic_tasks(50, CONFIG, seed=3) == tasks
    records = run_episodes(_episodes(tasks), OraclePolicy.for_synthetic(tasks))
    assert all(r.outcome.correct and r.outcome.progress_reward == 1.0 for r in records)
    assert records[0].steps[0][0].count(" ") == 1  # one call = two words
    records = run_episodes(_episodes(tasks), DoNothingPolicy())
    for task, record in zip(tasks, records):
        assert record.outcome.turn_rewards == [1.0 if turn is None else 0.0 for turn in task.turns]


class _WatchedOracle:
    """The oracle, noting the episodes of every round it is asked."""

    name = "watched-oracle"

    def __init__(self, tasks):
        self.oracle, self.rounds = OraclePolicy.for_synthetic(tasks), []

    def act(self, states):
        self.rounds.append([state.episode_id for state in states])
        return self.oracle.act(states)


def test_at_most_max_live_episodes_play_and_a_finished_ones_place_goes_to_the_next():
    """A three-turn episode, then one-turn ones (two oracle steps each), three in play: when two one-turn
    episodes end, the next two take their places beside the three-turn one. Records are those of all episodes
    in play at once: episodes are independent."""
    tasks = make_synthetic_tasks(1, SyntheticConfig(num_turns=3), seed=5) + make_synthetic_tasks(
        5, SyntheticConfig(num_turns=1), seed=4
    )
    plain = run_episodes(_episodes(tasks), OraclePolicy.for_synthetic(tasks))
    watched = _WatchedOracle(tasks)
    records = run_episodes(_episodes(tasks), watched, max_live=3)
    assert [(r.to_json(), r.steps) for r in records] == [(r.to_json(), r.steps) for r in plain]
    assert [len(round_) for round_ in watched.rounds[:3]] == [3, 3, 3]
    assert max(len(round_) for round_ in watched.rounds) == 3
    assert watched.rounds[2] == [tasks[0].id, tasks[3].id, tasks[4].id]


def test_random_text_earns_almost_nothing_but_a_small_vocabulary_finds_reward():
    tokenizer_module = pytest.importorskip("envtune_jax.chat.tokenizer")
    tokenizer = tokenizer_module.default_tokenizer()
    assert len(tokenizer.encode("light red", add_special_tokens=False).ids) == 2
    config = SyntheticConfig(num_turns=2)
    tasks = make_synthetic_tasks(200, config, seed=0)
    episodes = [SyntheticEpisode(t, config) for t in tasks]
    rng = random.Random(0)
    vocabulary = [tokenizer.decode([rng.randrange(151_643)]) for _ in range(5000)]
    records = run_episodes(episodes, _RandomTextPolicy(vocabulary, seed=1), keep_history=False)
    assert sum(r.outcome.progress_reward for r in records) / len(records) < 0.01
    words = ["light", " red", " green", " blue", "fan", " low", " high", "door", " open", " close", ""]
    episodes = [SyntheticEpisode(t, config) for t in tasks]
    records = run_episodes(episodes, _RandomTextPolicy(words, seed=2, max_words=2), keep_history=False)
    mean = sum(r.outcome.progress_reward for r in records) / len(records)
    assert 0.0 < mean < 0.2


def test_turn_needs_the_requested_call_then_a_reply():
    task = make_synthetic_tasks(1, SyntheticConfig(num_turns=2), seed=5)[0]
    (tool, value), (tool2, value2) = task.turns
    env = SyntheticEpisode(task, SyntheticConfig(num_turns=2))
    assert env.reset() == [{"role": "user", "content": user_request(tool, value)}]
    result = env.step(f"{tool} {value}", [ToolCall(tool, {"value": value})], [])
    assert result.messages == [{"role": "tool", "name": tool, "content": f'{{"{tool}": "{value}"}}'}]
    assert env.step("", [], []).messages[0]["content"] == user_request(tool2, value2)
    other = next(v for name, values in SyntheticConfig().devices if name == tool2 for v in values if v != value2)
    env.step("", [ToolCall(tool2, {"value": other})], [])
    env.step("", [], [])
    assert env.done and env.outcome().turn_rewards == [1.0, 0.0] and not env.outcome().correct


def test_hints_name_the_constraint_without_the_answer():
    config = SyntheticConfig(num_turns=1)
    task = make_synthetic_tasks(1, config, seed=11)[0]
    tool, value = task.turns[0]
    devices = dict(config.devices)
    wrong_tool = next(name for name in devices if name != tool)
    wrong_value = next(v for v in devices[tool] if v != value)
    env = SyntheticEpisode(task, config, EnvironmentConfig.training(augmented=True))
    env.reset()
    hints = [
        env.step("", [ToolCall(wrong_tool, {"value": devices[wrong_tool][0]})], []).messages[0]["content"],
        env.step("", [ToolCall(tool, {"value": "purple"})], []).messages[0]["content"],
        env.step("", [ToolCall(tool, {"value": wrong_value})], []).messages[0]["content"],
        env.step("", [ToolCall("toaster", {"value": "on"})], []).messages[0]["content"],
    ]
    assert all("Hint:" in h for h in hints)
    assert all(value not in h.split("Hint:")[1] for h in hints)
    assert "Hint" not in env.step("", [ToolCall(tool, {"value": value})], []).messages[0]["content"]
