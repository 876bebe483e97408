"""The stage-1 syntax reward R1 = I_tool * (R_format + R_tool), against values computed by hand.

R_format = (N - steps with format errors) / N over all N steps, R_tool = valid / (valid + invalid) calls,
I_tool = 1 iff a tool call was attempted (a malformed call counts as an attempt); R1 lies in [0, 2].
"""

from __future__ import annotations

import pytest

from envtune_jax.environments.base import ToolCall
from envtune_jax.environments.bfcl_data import entry_by_id
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.rewards import syntax_reward


@pytest.mark.parametrize(
    "steps, format_error_steps, valid, invalid, expected",
    [
        (4, 0, 3, 0, 2.0),  # well-formed: every step parses, every call valid -> 1 + 1
        (2, 0, 0, 0, 0.0),  # text only: no tool call attempted, I_tool = 0
        (0, 0, 0, 0, 0.0),  # no step at all
        (3, 0, 0, 2, 1.0),  # well-formed but invalid calls: 3/3 + 0/2
        (4, 1, 0, 0, 0.75),  # malformed only: the bad step is an attempt -> 3/4 + 0 (no calls to score)
        (2, 2, 0, 0, 0.0),  # every step malformed: 0/2 + 0
        (5, 2, 3, 1, 1.35),  # mixed: 3/5 + 3/4
        (10, 3, 2, 6, 0.95),  # mixed: 7/10 + 2/8
    ],
)
def test_syntax_reward_hand_computed(steps, format_error_steps, valid, invalid, expected):
    assert syntax_reward(steps, format_error_steps, valid, invalid) == pytest.approx(expected)


def test_syntax_reward_of_an_episode_counts_every_step():
    entry = entry_by_id("multi_turn_base_0")
    config = EnvironmentConfig.training(augmented=True)
    config.reward = "syntax"
    env = BfclEpisode(entry, config)
    env.reset()
    env.step("bad", [], ["Tool call #1 is not valid JSON"])  # malformed step, no call
    env.step("pwd", [ToolCall("pwd", {})], [])  # valid call
    env.step("mixed", [ToolCall("ls", {}), ToolCall("cd", {"folder": 3})], ["Tool call #3 has no name"])
    env.step("Done.", [], [])  # the text reply ending the turn is a step too
    outcome = env.outcome()
    counters = outcome.counters
    assert (counters["steps"], counters["format_error_steps"]) == (4, 2)
    assert (counters["valid_calls"], counters["invalid_calls"]) == (2, 1)
    assert outcome.syntax_reward == pytest.approx(2 / 4 + 2 / 3)
    assert outcome.reward == outcome.syntax_reward


def test_an_unknown_tool_is_a_tool_error_not_also_a_format_error():
    """Through the rollout's parsing glue: "unknown tool, then a reply" has R_format = 2/2 and R_tool = 0/1,
    so R1 = 1.0 (counting the unknown name as a format error too would give 0.5)."""
    from envtune_jax.chat.conversation import TokenConversation
    from envtune_jax.chat.special_tokens import IM_END
    from envtune_jax.chat.tokenizer import default_tokenizer, encode_text
    from envtune_jax.rl.rollout import read_last_step

    tokenizer = default_tokenizer()
    config = EnvironmentConfig.training(augmented=True, reward="syntax")
    env = BfclEpisode(entry_by_id("multi_turn_base_0"), config)
    conversation = TokenConversation(tokenizer)
    conversation.start(env.reset(), env.tools())
    for text in ('<tool_call>\n{"name": "list_everything", "arguments": {}}\n</tool_call>', "Nothing to do."):
        conversation.append_sampled(encode_text(tokenizer, text + IM_END))
        calls, errors, sampled = read_last_step(env, conversation)
        result = env.step(sampled, calls, errors)
        if not env.done:
            conversation.append_environment(result.messages)
    counters = env.outcome().counters
    assert (counters["steps"], counters["format_error_steps"], counters["invalid_calls"]) == (2, 0, 1)
    assert env.outcome().syntax_reward == pytest.approx(1.0)
