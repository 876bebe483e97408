"""Model output that used to stop a whole run comes back to the model as a bounded error string, through
both paths (training and evaluation), as the official executor's string where it defines one."""

from __future__ import annotations

import json
import re
import sys

import pytest

from envtune_jax.chat.parse import parse_tool_calls
from envtune_jax.chat.render import render_messages
from envtune_jax.chat.tokenizer import default_tokenizer, encode_text
from envtune_jax.environments.bfcl_data import entry_by_id
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.protocol import decode_official_step, history_message
from envtune_jax.untrusted_json import MAX_JSON_DEPTH, JsonTooDeepError, json_text_depth, loads_bounded, value_depth
from envtune_jax.untrusted_text import ECHO_LIMIT, MESSAGE_LIMIT, clip_middle, replace_surrogates
from tests.environments.conftest import official_results, play_evaluation, play_training

pytest.importorskip("bfcl_eval.model_handler.local_inference.qwen_fc")

MATH = entry_by_id("multi_turn_base_15")  # GorillaFileSystem + MathAPI
FILES = entry_by_id("multi_turn_base_0")  # GorillaFileSystem + TwitterAPI
FILES_TOOLS = BfclEpisode(FILES).tools()


def _call(name, arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def _first_tool_contents(entry, text, config):
    """The tool messages answering `text` as the first step, through evaluation and training."""
    [record] = play_evaluation([BfclEpisode(entry, EnvironmentConfig.evaluation())], {entry.id: [[text]]})
    assert record.steps[0][0] == text
    results, _ = play_training(BfclEpisode(entry, config), [[text]])
    return results[0].messages


TRAINING = EnvironmentConfig.training(augmented=True)


@pytest.mark.parametrize(
    "call_source, arguments, name",
    [
        ("power(base=10,exponent=5000)", {"base": 10, "exponent": 5000}, "power"),
        ("multiply(a=%d,b=%d)" % (10**3000, 7 * 10**2999), {"a": 10**3000, "b": 7 * 10**2999}, "multiply"),
    ],
)
def test_results_over_the_digit_limit_are_the_official_error_string(call_source, arguments, name):
    [official] = official_results(MATH, [call_source])
    assert official.startswith("Error during execution: Exceeds the limit (4300 digits)")
    for config in (EnvironmentConfig.evaluation(), TRAINING):
        env = BfclEpisode(MATH, config)
        env.reset()
        assert env.step("", [_tool_call(name, arguments)], []).messages[0]["content"] == official
    for message in _first_tool_contents(MATH, _call(name, arguments), TRAINING):
        assert message["content"] == official


def _tool_call(name, arguments):
    from envtune_jax.environments.base import ToolCall

    return ToolCall(name, arguments)


def test_a_lone_surrogate_in_a_tool_name_is_tokenized_as_the_replacement_character():
    text = '<tool_call>\n{"name": "ls\\udfff", "arguments": {}}\n</tool_call>'
    [record] = play_evaluation([BfclEpisode(FILES, EnvironmentConfig.evaluation())], {FILES.id: [[text, text]]})
    assert record.outcome.counters["tool_errors"] == 2
    results, conversation = play_training(BfclEpisode(FILES, TRAINING), [[text]])
    assert results[0].messages[0]["content"].startswith("Error during execution: name 'ls\udfff' is not defined")
    assert "ls\ufffd" in conversation.text()  # the environment's echo, tokenized with U+FFFD
    tokenizer = default_tokenizer()
    assert encode_text(tokenizer, "a\udfffb\ud800") == encode_text(tokenizer, "a\ufffdb\ufffd")
    assert replace_surrogates("ok \U0001f600") == "ok \U0001f600"  # real astral characters are kept


def _at_stack_depth(frames: int, function):
    """Runs `function` with `frames` more frames on the stack (callers sit at different depths)."""
    return function() if frames == 0 else _at_stack_depth(frames - 1, function)


def test_deep_arguments_get_the_official_nesting_error_and_deeper_bodies_do_not_decode():
    deep = [0]
    for _ in range(219):  # 220 levels: past what the official executor's eval parses, within MAX_JSON_DEPTH
        deep = [deep]
    [official] = official_results(FILES, ["ls(a=%r)" % (deep,)])
    assert official == "Error during execution: too many nested parentheses (<string>, line 1)"
    messages = _first_tool_contents(FILES, _call("ls", {"a": deep}), TRAINING)
    assert messages[0]["content"].startswith(official)

    # Bodies nested past MAX_JSON_DEPTH are not JSON to either parser, at any stack depth; anything
    # shallower decodes and re-renders in the official history format from a deep stack too.
    too_deep = _call("ls", {"a": json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)})
    for frames in (0, 200):
        assert _at_stack_depth(frames, lambda: decode_official_step(too_deep)) == []
        parsed = _at_stack_depth(frames, lambda: parse_tool_calls(too_deep))
        assert not parsed.calls and "nested" in parsed.errors[0].message
    for depth in range(200, 1001):  # where the decoder, the copy and the encoder used to give out
        text = '<tool_call>\n{"name": "ls", "arguments": {"a": ' + "[" * depth + "]" * depth + "}}\n</tool_call>"
        _at_stack_depth(150, lambda: _decode_and_render(text))
    for depth in (MAX_JSON_DEPTH - 3, MAX_JSON_DEPTH - 2):  # the deepest bodies that decode (+2: call, arguments)
        text = '<tool_call>\n{"name": "ls", "arguments": {"a": ' + "[" * depth + "]" * depth + "}}\n</tool_call>"
        [record] = _at_stack_depth(
            100, lambda: play_evaluation([BfclEpisode(FILES, EnvironmentConfig.evaluation())], {FILES.id: [[text]]})
        )
        assert record.outcome.counters["tool_calls"] == 1


def _decode_and_render(text):
    """The evaluation's decode, then the official history message rendered as the next prompt holds it."""
    decode_official_step(text)
    history = [{"role": "user", "content": "go"}, history_message(text)]
    return render_messages(history, FILES_TOOLS)


def test_a_ten_megabyte_tool_name_is_echoed_bounded():
    name = "a" * 10_000_000
    text = '<tool_call>\n{"name": "%s", "arguments": {}}\n</tool_call>' % name
    for config in (EnvironmentConfig.evaluation(), TRAINING):
        env = BfclEpisode(FILES, config)
        env.reset()
        if config.format_feedback:  # training: the chat parser, whose errors come back as feedback
            parsed = parse_tool_calls(text, env.offered_tool_names())
            calls, errors = list(parsed.well_formed_calls), [error.message for error in parsed.errors]
        else:
            calls, errors = env.decode_step(text)
        messages = env.step(text, calls, errors).messages
        assert messages and all(len(m["content"]) <= 2 * MESSAGE_LIMIT + 1 for m in messages)
        assert all(len(m.get("name", "")) <= ECHO_LIMIT for m in messages)
        error = messages[0]["content"].split("\n")[0]
        assert len(error) <= MESSAGE_LIMIT and error.startswith("Error during execution: name 'aaa")
        if config.hints:
            hint = messages[0]["content"].split("\n")[1]
            assert hint.startswith("Hint: 'aaa") and "characters cut" in hint and len(hint) < 2 * ECHO_LIMIT
    # What the environment appends to a training conversation quotes the name bounded.
    _, conversation = play_training(BfclEpisode(FILES, TRAINING), [[_call("a" * 5000, {})]])
    ids = conversation.ids
    replies = [
        default_tokenizer().decode(ids[s.start : s.end]) for s in conversation.boundaries if s.kind == "environment"
    ]
    assert (
        "a" * 5000 not in "".join(replies) and max(len(run) for run in re.findall("a+", "".join(replies))) < ECHO_LIMIT
    )


def test_clip_middle_keeps_both_ends_and_counts_what_it_cut():
    text = "start-" + "x" * 5000 + "-end"
    clipped = clip_middle(text, 100)
    assert len(clipped) == 100 and clipped.startswith("start-") and clipped.endswith("-end")
    head, rest = clipped.split("…[")
    cut, tail = rest.split(" characters cut]…")
    assert len(head) + int(cut) + len(tail) == len(text) and text.startswith(head) and text.endswith(tail)
    assert clip_middle("short", 100) == "short"


def test_json_depth_is_measured_without_recursion_and_ignores_strings():
    assert json_text_depth('{"a": "[[[[", "b": [{"c": "\\"]]"}]}') == 3
    assert value_depth(json.loads('{"a": "[[[[", "b": [{"c": "\\"]]"}]}')) == 3
    assert json_text_depth("[" * 100_000) == 100_000  # no recursion, any depth
    deep = []
    for _ in range(100_000):
        deep = [deep]
    assert value_depth(deep) == 100_001
    with pytest.raises(JsonTooDeepError):
        loads_bounded("[" * 600 + "]" * 600)
    assert loads_bounded("[" * 5 + "]" * 5) == [[[[[]]]]]
    assert sys.getrecursionlimit() < 100_000  # the measurements above would have overflowed a recursion
