"""Fuzz: hostile assistant texts through both paths never raise, every failing call answers with a bounded
error string, and evaluation verdicts equal the official pipeline's on the same recordings.

Texts mix <tool_call> blocks (well formed, without their newlines, truncated, arguments as a JSON string)
with surrogates, control-token strings, long strings, numbers around Python's 4,300-digit limit, results
over it, infinities and arguments nested up to 400 levels. Names are the entry's tools, the same names
with a hostile tail, or an unknown identifier, and top-level argument keys are identifiers: the official
executor evals the calls it decodes, and every string handed to it here either fails to compile or calls
one of the tools below (none of which loops on its arguments).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from envtune_jax.environments.bfcl_data import entry_by_id
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.executor import EXECUTION_ERROR_PREFIX
from envtune_jax.environments.gt_calls import ground_truth_tool_calls
from envtune_jax.environments.protocol import render_calls
from envtune_jax.untrusted_text import MESSAGE_LIMIT
from tests.environments.conftest import official_verdict, play_evaluation, play_training

pytest.importorskip("bfcl_eval.model_handler.local_inference.qwen_fc")

ENTRY = entry_by_id("multi_turn_base_32")  # GorillaFileSystem + MathAPI, two turns
ORACLE_TURNS = [render_calls(ground_truth_tool_calls(turn, ENTRY.involved_classes)) for turn in ENTRY.ground_truth]
TOOLS = ["ls", "cd", "mkdir", "touch", "echo", "cat", "pwd", "add", "multiply", "wc"]
HOSTILE_TAILS = ["\udfff", "\ud800x", "<|im_end|>", "<tool_call>", "\x00", "a" * 3000]
CONTROL_STRINGS = [
    "<|im_end|>",
    "<|im_start|>user\nhi",
    "<|endoftext|>",
    "<tool_call>",
    "</tool_call>",
    "\n</tool_call>\n<tool_call>\n",
    "<think>",
    "</think>",
    "<tool_response>",
]
BIG = "@@big{}@@"  # a placeholder string: its JSON text becomes a number with that many digits

names = st.one_of(
    st.sampled_from(TOOLS),
    st.builds(str.__add__, st.sampled_from(TOOLS), st.sampled_from(HOSTILE_TAILS)),
    st.just("no_such_tool"),
)
strings = st.one_of(
    st.text(max_size=20),
    st.sampled_from(CONTROL_STRINGS + ["\udfff", "ab\ud800cd", "a/b", "..", "Spring2023Draft"]),
    st.builds(str.__mul__, st.sampled_from(["x", "\udfff", "<", "[", "\\"]), st.integers(1000, 40_000)),
)
numbers = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.builds(BIG.format, st.integers(4200, 4400)),  # the digit limit is 4,300: decodes or does not
)
leaves = st.one_of(st.none(), st.booleans(), numbers, strings)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["k", "\udfff", "<|im_end|>"]), children, max_size=3)
    ),
    max_leaves=6,
)
keys = st.sampled_from(["a", "folder", "dir_name", "file_name", "content", "mode", "b", "x"])


@st.composite
def call_bodies(draw) -> str:
    kind = draw(st.sampled_from(["plain", "plain", "deep", "power", "product", "string_arguments"]))
    name, arguments = draw(names), draw(st.dictionaries(keys, values, max_size=3))
    if kind == "deep":
        nested = draw(leaves)
        for _ in range(draw(st.integers(150, 400))):
            nested = [nested]
        arguments = {draw(keys): nested}
    elif kind == "power":  # results past the digit limit, computed fast
        name, arguments = "power", {"base": draw(st.integers(-10, 10)), "exponent": draw(st.integers(0, 20_000))}
    elif kind == "product":
        name, arguments = (
            "multiply",
            {"a": BIG.format(draw(st.integers(1, 4299))), "b": BIG.format(draw(st.integers(1, 4299)))},
        )
    ascii_only = draw(st.booleans())
    body = {
        "name": name,
        "arguments": json.dumps(arguments, ensure_ascii=ascii_only) if kind == "string_arguments" else arguments,
    }
    text = json.dumps(body, ensure_ascii=ascii_only)
    for digits in range(1, 4401):  # placeholders to digits (json.dumps cannot write ints past the limit)
        if BIG.format(digits) in text:
            text = text.replace(json.dumps(BIG.format(digits)), "1" + "0" * (digits - 1))
    return text


@st.composite
def assistant_texts(draw) -> str:
    blocks = []
    for body in draw(st.lists(call_bodies(), min_size=1, max_size=3)):
        frame = draw(st.sampled_from(["official", "official", "no_newlines", "truncated"]))
        if frame == "official":
            blocks.append(f"<tool_call>\n{body}\n</tool_call>")
        elif frame == "no_newlines":
            blocks.append(f"<tool_call>{body}</tool_call>")
        else:
            blocks.append(f"<tool_call>\n{body[: len(body) // 2]}\n</tool_call>")
    noise = draw(st.lists(st.sampled_from(CONTROL_STRINGS + ["", "text"]), max_size=2))
    reasoning = draw(st.sampled_from(["", "<think>\nplan\n</think>\n\n"]))
    return reasoning + "\n".join(noise[:1] + blocks + noise[1:])


def _assert_bounded_errors(env: BfclEpisode, messages) -> None:
    errors = [r for r in env.agent_results() if r.startswith(EXECUTION_ERROR_PREFIX)]
    assert all(len(error) <= MESSAGE_LIMIT for error in errors)
    for message in messages:
        if message["role"] == "tool" and message["content"].startswith(EXECUTION_ERROR_PREFIX):
            assert len(message["content"]) <= 2 * MESSAGE_LIMIT + 1  # the error and its hint
        elif message["role"] == "tool" and "name" not in message:  # format feedback
            assert len(message["content"]) <= MESSAGE_LIMIT


@settings(
    max_examples=35,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(text=assistant_texts(), turn=st.integers(0, len(ENTRY.ground_truth) - 1))
def test_hostile_texts_through_training_and_evaluation(text, turn):
    recording = [[ORACLE_TURNS[t], "Done."] for t in range(len(ENTRY.ground_truth))]
    recording[turn].insert(0, text)

    training = BfclEpisode(ENTRY, EnvironmentConfig.training(augmented=True))
    results, _ = play_training(training, recording)
    _assert_bounded_errors(training, [m for result in results for m in result.messages])

    evaluation = BfclEpisode(ENTRY, EnvironmentConfig.evaluation())
    [record] = play_evaluation([evaluation], {ENTRY.id: recording})
    _assert_bounded_errors(evaluation, [])
    assert record.outcome.correct == official_verdict(ENTRY, record.steps), record.steps
    event(f"verdict {record.outcome.correct}, {min(3, record.outcome.counters['tool_errors'])}+ tool errors")
