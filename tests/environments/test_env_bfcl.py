"""BFCL episodes: the oracle and do-nothing runs over all 800 entries, rewards, turn protocol, augmentation,
fresh API instances per episode (long_context loading for that category only)."""

from __future__ import annotations

import collections
import copy
import dataclasses

import pytest

from envtune_jax.environments.base import EpisodeFinishedError, ToolCall
from envtune_jax.environments.bfcl_data import CATEGORIES, entry_by_id, load_entries
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.episode_core import EMPTY_TURN_WARNING
from envtune_jax.environments.evaluation import evaluate_bfcl
from envtune_jax.environments.gt_calls import ground_truth_tool_calls
from envtune_jax.environments.policies import DoNothingPolicy, OraclePolicy


def _truth(entry, turn):
    return ground_truth_tool_calls(entry.ground_truth[turn], entry.involved_classes)


def _in_process(config: EnvironmentConfig) -> EnvironmentConfig:
    """The config without a time limit: the API instances live in this process, where a test can look."""
    return dataclasses.replace(config, call_time_limit_s=None)


def test_oracle_through_the_text_protocol_scores_100_percent_on_all_800_entries():
    entries = load_entries()
    records = evaluate_bfcl(entries, OraclePolicy.for_bfcl(entries), EnvironmentConfig.evaluation())
    per_category = collections.Counter(r.category for r in records if r.outcome.correct)
    assert per_category == {category: 200 for category in CATEGORIES}
    assert all(r.outcome.progress_reward == 1.0 for r in records)
    assert all(r.outcome.counters["tool_errors"] >= 0 and r.outcome.counters["force_quit"] == 0 for r in records)
    # The recorded layout: one list per turn, the last step of each turn is the plain reply.
    record = records[0]
    assert len(record.steps) == entry_by_id(record.episode_id).num_turns
    assert all(turn[-1] == "Done." for turn in record.steps)


def test_do_nothing_scores_zero():
    entries = load_entries()
    records = evaluate_bfcl(entries, DoNothingPolicy(), EnvironmentConfig.evaluation(), keep_history=False)
    assert sum(r.outcome.correct for r in records) == 0
    # Empty-ground-truth turns (miss_func / miss_param) are the only ones a text reply wins.
    for record in records:
        entry = entry_by_id(record.episode_id)
        expected = [0.0 if calls else 1.0 for calls in entry.ground_truth]
        assert record.outcome.turn_rewards == expected


def test_progress_reward_per_turn_and_mean_over_all_turns():
    entry = entry_by_id("multi_turn_miss_param_0")  # 5 turns, turn 3 expects no call
    env = BfclEpisode(entry, EnvironmentConfig.training(augmented=False))
    env.reset()
    env.step("t0", _truth(entry, 0), [])
    env.step("", [], [])  # turn 0 right
    env.step("t1", [ToolCall("cd", {"folder": "temp"})], [])
    env.step("", [], [])  # turn 1: the grep result is missing
    env.step("t2", _truth(entry, 2), [])
    env.step("", [], [])  # turn 2 right again
    env.step("t3", [ToolCall("ls", {})], [])
    env.step("", [], [])  # turn 3 expected no call: 0
    outcome = env.outcome()
    assert outcome.turn_rewards == [1.0, 0.0, 1.0, 0.0, 0.0]  # the last turn is not reached yet
    assert outcome.progress_reward == pytest.approx(2 / 5)
    assert not outcome.correct and not env.done
    env.step("t4", _truth(entry, 4), [])
    env.step("", [], [])
    outcome = env.outcome()
    assert env.done and outcome.turn_rewards == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert outcome.progress_reward == pytest.approx(3 / 5) and outcome.reward == outcome.progress_reward
    assert not outcome.correct  # turn 1 failed the official check
    with pytest.raises(EpisodeFinishedError):
        env.step("", [], [])


def test_wrong_state_or_missing_response_fails_the_turn():
    entry = entry_by_id("multi_turn_base_0")
    env = BfclEpisode(entry)
    env.reset()
    calls = _truth(entry, 0)
    env.step("", calls[:-1], [])  # the final mv is missing: state differs
    env.step("", [], [])
    env.step("", [ToolCall("cd", {"folder": "temp"})], [])  # turn 1 without the grep: response missing
    env.step("", [], [])
    assert env.outcome().turn_rewards[:2] == [0.0, 0.0]


def test_step_cap_force_quits_and_fails_unless_last_turn():
    entry = entry_by_id("multi_turn_base_0")
    config = EnvironmentConfig(max_steps_per_turn=2)
    env = BfclEpisode(entry, config)
    env.reset()
    for _ in range(2):
        assert not env.step("", [ToolCall("pwd", {})], []).done
    result = env.step("", [ToolCall("pwd", {})], [])
    assert result.done and result.turn_ended and env.done
    outcome = env.outcome()
    assert outcome.counters["force_quit"] == 1 and not outcome.correct
    assert outcome.turn_rewards == [0.0] * entry.num_turns

    # A force-quit in the last turn is judged normally, as the official evaluation does.
    env = BfclEpisode(entry, config)
    env.reset()
    for turn in range(entry.num_turns - 1):
        env.step("", _truth(entry, turn), [])
        env.step("", [], [])
    env.step("", _truth(entry, entry.num_turns - 1), [])
    env.step("", [ToolCall("pwd", {})], [])
    assert env.step("", [ToolCall("pwd", {})], []).done
    assert env.outcome().correct and env.outcome().counters["force_quit"] == 1


def test_truncate_scores_reached_turns_only():
    entry = entry_by_id("multi_turn_base_0")
    env = BfclEpisode(entry)
    env.reset()
    env.step("", _truth(entry, 0), [])
    env.step("", [], [])
    env.truncate("token budget")
    outcome = env.outcome()
    assert env.done and not outcome.correct and outcome.counters["truncated"] == 1
    assert outcome.turn_rewards == [1.0] + [0.0] * (entry.num_turns - 1)


def test_format_feedback_continues_the_turn_and_empty_turn_warning_blocks_calls():
    entry = entry_by_id("multi_turn_miss_param_0")
    env = BfclEpisode(entry, _in_process(EnvironmentConfig.training(augmented=True)))
    env.reset()
    result = env.step("bad", [], ["Tool call #1 is not valid JSON"])
    assert not result.turn_ended and result.messages == [{"role": "tool", "content": "Tool call #1 is not valid JSON"}]
    for turn in range(3):
        env.step("", _truth(entry, turn), [])
        env.step("", [], [])
    # Turn 3 expects no call: a call is not executed, the turn ends with 0, the next turn starts with a warning.
    cwd_before = env._backend.agent["GorillaFileSystem"]._current_dir.name
    result = env.step("", [ToolCall("cd", {"folder": ".."})], [])
    assert result.turn_ended and not result.done
    assert result.messages[0]["content"].startswith(EMPTY_TURN_WARNING)
    assert entry.question[4][0]["content"] in result.messages[0]["content"]
    assert env._backend.agent["GorillaFileSystem"]._current_dir.name == cwd_before
    assert env.outcome().turn_rewards[3] == 0.0 and env.outcome().counters["blocked_calls"] == 1
    counters = env.outcome().counters
    assert counters["format_errors"] == 1 and counters["format_error_steps"] == 1


def test_evaluation_protocol_ends_turn_on_undecodable_step_and_adds_no_hints():
    entry = entry_by_id("multi_turn_base_0")
    env = BfclEpisode(entry, EnvironmentConfig.evaluation())
    env.reset()
    result = env.step("x", [ToolCall("cat", {"file_name": "no/such.txt"})], [])
    assert "Hint" not in result.messages[0]["content"]
    result = env.step("x", [], ["undecodable"])
    assert result.turn_ended


def test_miss_func_holdout_turn_offers_withheld_tools_in_the_user_message():
    entry = entry_by_id("multi_turn_miss_func_3")  # find, ls withheld until turn 1
    env = BfclEpisode(entry, EnvironmentConfig.training(augmented=False))
    env.reset()
    assert "find" not in env.offered_tool_names() and "find" not in {d["name"] for d in env.tools()}
    blocked = env.step("", [ToolCall("find", {"path": "."})], [])
    assert blocked.messages[0]["content"] == "Error during execution: name 'find' is not defined"
    result = env.step("", [], [])
    message = result.messages[0]["content"]
    assert message.endswith("\nI have updated some more functions you can choose from. What about now?")
    assert "'name': 'find'" in message and "Python 3 syntax" not in message
    assert {"find", "ls"} <= env.offered_tool_names()
    assert all(
        d["description"].endswith(" Note that the provided function is in Python 3 syntax.") for d in env.tools()
    )


def test_presets_and_yaml_overrides():
    from envtune_jax.config import ConfigError, load

    evaluation, training = EnvironmentConfig.evaluation(), EnvironmentConfig.training(augmented=True)
    assert (evaluation.max_steps_per_turn, evaluation.augmented, evaluation.execute_withheld_tools) == (20, False, True)
    assert (training.max_steps_per_turn, training.hints, training.format_feedback, training.empty_turn_warning) == (
        5,
        True,
        True,
        True,
    )
    assert EnvironmentConfig.replay().max_steps_per_turn is None
    loaded = load(EnvironmentConfig, None, ["max_steps_per_turn=5", "reward=syntax", "call_time_limit_s=none"])
    assert (loaded.max_steps_per_turn, loaded.reward, loaded.call_time_limit_s) == (5, "syntax", None)
    with pytest.raises(ConfigError):
        load(EnvironmentConfig, None, ["reward=sintax"])
    with pytest.raises(ValueError):
        EnvironmentConfig(max_steps_per_turn=0)


class _RenderingOracle:
    """The oracle, but it first renders the conversation it is given with the chat package and with the
    official handler's formatter, and records whether they agree (what a model-backed policy would see)."""

    name = "rendering-oracle"

    def __init__(self, entries):
        from bfcl_eval.model_handler.local_inference.qwen_fc import QwenFCHandler

        self.oracle, self.official = OraclePolicy.for_bfcl(entries), object.__new__(QwenFCHandler)
        self.mismatches, self.rendered = [], 0

    def act(self, states):
        from envtune_jax.chat.render import render_messages

        for state in states:
            ours = render_messages(state.messages, state.tools, style="qwen_fc")
            if ours != self.official._format_prompt(state.messages, state.tools):
                self.mismatches.append((state.episode_id, state.turn, state.step))
            self.rendered += 1
        return self.oracle.act(states)


def test_conversation_given_to_a_model_renders_as_the_official_handler_does():
    pytest.importorskip("bfcl_eval.model_handler.local_inference.qwen_fc")
    entries = load_entries()[::20]
    policy = _RenderingOracle(entries)
    records = evaluate_bfcl(entries, policy, EnvironmentConfig.evaluation(), keep_history=True)
    assert all(r.outcome.correct for r in records) and policy.rendered > 100
    assert not policy.mismatches, policy.mismatches[:5]


def test_long_context_flag_reaches_the_api_instances_of_long_context_entries_only():
    checked = collections.Counter()
    for entry in load_entries():
        env = BfclEpisode(entry, _in_process(EnvironmentConfig.evaluation()))
        env.reset()
        for instances in (env._backend.agent, env._backend.truth):
            for class_name, instance in instances.items():
                if hasattr(instance, "long_context"):  # classes whose data depends on it set the attribute
                    assert instance.long_context is (entry.category == "multi_turn_long_context"), (
                        entry.id,
                        class_name,
                    )
                    checked[entry.category] += 1
    assert set(checked) == set(CATEGORIES)


def test_each_episode_gets_fresh_api_instances():
    entry = entry_by_id("multi_turn_base_0")  # GorillaFileSystem and TwitterAPI
    initial_config = copy.deepcopy(entry.initial_config)
    login = {k: entry.initial_config["TwitterAPI"][k] for k in ("username", "password")}
    config = _in_process(EnvironmentConfig.evaluation())
    first = BfclEpisode(entry, config)
    first.reset()
    fs, twitter = first._backend.agent["GorillaFileSystem"], first._backend.agent["TwitterAPI"]
    tweets = len(twitter.tweets)
    calls = [
        ToolCall("mkdir", {"dir_name": "zz_new"}),
        ToolCall("authenticate_twitter", login),
        ToolCall("post_tweet", {"content": "zz"}),
    ]
    first.step("", calls, [])
    assert "zz_new" in fs._current_dir.contents and len(twitter.tweets) == tweets + 1 and twitter.authenticated
    assert (
        fs is not first._backend.truth["GorillaFileSystem"]
        and "zz_new" not in first._backend.truth["GorillaFileSystem"]._current_dir.contents
    )

    def untouched(env):
        agent = env._backend.agent
        assert agent["GorillaFileSystem"] is not fs and agent["TwitterAPI"] is not twitter
        assert "zz_new" not in agent["GorillaFileSystem"]._current_dir.contents
        assert len(agent["TwitterAPI"].tweets) == tweets and not agent["TwitterAPI"].authenticated

    second = BfclEpisode(entry, config)
    second.reset()
    untouched(second)
    first.reset()  # a reset of the same episode object starts over too
    untouched(first)
    assert entry.initial_config == initial_config
