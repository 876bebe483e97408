"""The synthetic task: exact text protocol, same reward machinery, low reward for random text, hints."""
from __future__ import annotations

import random

import pytest

from environments.base import ToolCall
from environments.config import EnvironmentConfig
from environments.evaluation import run_episodes
from environments.policies import STEP_PENDING, DoNothingPolicy, OraclePolicy, PolicyStep
from environments.synthetic import (
    SyntheticConfig, SyntheticEpisode, make_synthetic_tasks, parse_compact_calls, user_request,
)

CONFIG = SyntheticConfig(num_turns=3, chat_turn_probability=0.3)


class _RandomTextPolicy:
    """Each step: a few tokens drawn uniformly from `vocabulary` (a randomly initialised model's output)."""

    name = "random"

    def __init__(self, vocabulary, seed, max_words=3):
        self.vocabulary, self.rng, self.max_words = vocabulary, random.Random(seed), max_words

    def act(self, states):
        return [PolicyStep("".join(self.rng.choice(self.vocabulary) for _ in range(self.rng.randint(0, self.max_words))))
                for _ in states]


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


class _SlowOracle:
    """The oracle, answering STEP_PENDING `waits` times before each step (a policy still generating it)."""

    name = "slow-oracle"

    def __init__(self, tasks, waits):
        self.oracle, self.waits, self.asked, self.seen = OraclePolicy.for_synthetic(tasks), waits, {}, []

    def act(self, states):
        steps = []
        for state in states:
            key = (state.episode_id, state.turn, state.step)
            self.asked[key] = self.asked.get(key, 0) + 1
            self.seen.append(state.episode_id)
            ready = self.asked[key] > self.waits(*key)
            steps.append(self.oracle.act([state])[0] if ready else STEP_PENDING)
        return steps


def test_pending_steps_wait_and_the_other_episodes_move_on():
    """An episode answered STEP_PENDING keeps its state and is asked again; meanwhile the others step on and
    a finished episode's place goes to the next one. Records are those of the plain oracle."""
    tasks = make_synthetic_tasks(6, CONFIG, seed=4)
    plain = run_episodes(_episodes(tasks), OraclePolicy.for_synthetic(tasks), max_live=3)
    slow = _SlowOracle(tasks, waits=lambda episode, turn, step: 4 if episode == tasks[0].id else turn % 2)
    records = run_episodes(_episodes(tasks), slow, max_live=3)
    assert [(r.to_json(), r.steps) for r in records] == [(r.to_json(), r.steps) for r in plain]
    assert all(count == slow.waits(*key) + 1 for key, count in slow.asked.items())  # same state, asked again
    first_done = max(i for i, episode in enumerate(slow.seen) if episode == tasks[0].id)
    assert tasks[3].id in slow.seen[:first_done]  # episode 0 was still pending when another took a place


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
