"""Training reads a model step exactly as the official BFCL harness does (fuzzed against the harness itself).

Outputs are built from the pieces that matter to the official Qwen FC handler: call tags with and without
their newlines, <think> blocks, calls with string arguments, extra keys, names that are not strings,
values that are not calls, JSON cut short, text around the blocks. For every output the official handler
(`_parse_query_response_prompting` then `decode_execute`, the path of `inference_multi_turn_prompting`)
and ours must agree on: accepting or rejecting the step, the decoded calls (as the harness's call
strings), the visible text, and the assistant message kept in the history.
"""

from __future__ import annotations

import json
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envtune_jax.chat import parse_errors as pe
from envtune_jax.chat.bfcl_prompt import bfcl_history_assistant_message
from envtune_jax.chat.official_decode import split_reasoning
from envtune_jax.chat.parse import parse_tool_calls
from envtune_jax.environments.protocol import decode_official_step

qwen_fc = pytest.importorskip("bfcl_eval.model_handler.local_inference.qwen_fc")
_HANDLER = object.__new__(qwen_fc.QwenFCHandler)  # these methods need no handler state


def official_step(output: str) -> tuple[str, list[str] | None, dict]:
    """(visible text, call strings or None if undecodable, history message) as the official harness has them."""
    response = types.SimpleNamespace(
        choices=[types.SimpleNamespace(text=output)], usage=types.SimpleNamespace(prompt_tokens=0, completion_tokens=0)
    )
    parsed = _HANDLER._parse_query_response_prompting(response)
    try:
        calls = _HANDLER.decode_execute(parsed["model_responses"], has_tool_call_tag=False)
    except Exception:
        calls = None
    return parsed["model_responses"], calls, parsed["model_responses_message_for_chat_history"]


def call_strings(calls) -> list[str]:
    return [f"{c.name}({','.join(f'{k}={v!r}' for k, v in c.arguments.items())})" for c in calls]


_WORDS = st.sampled_from(["ls", "cd", "", "x y", "é", "<", "{", "}", '"', "\\", "\n", " ", "\n\n"])
_LEAVES = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False) | _WORDS
_JSON = st.recursive(
    _LEAVES, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_WORDS, kids, max_size=3), max_leaves=6
)
_ARGUMENTS = st.one_of(
    st.dictionaries(_WORDS, _JSON, max_size=3),
    st.dictionaries(_WORDS, _JSON, max_size=3).map(json.dumps),  # a JSON string holding an object
    _JSON,  # anything else: a list, a number, a string that is not an object, null
)
_NAMES = st.one_of(
    st.sampled_from(["ls", "cd", "mv", "", "no_such_tool"]),
    st.integers(0, 9),
    st.none(),
    st.booleans(),
    st.lists(st.just("ls"), max_size=1),
)


@st.composite
def _call_objects(draw) -> str:
    """The JSON text of something that may or may not be a call."""
    value: dict = {}
    keys = draw(st.permutations(["name", "arguments", "extra"]))
    for key in keys:
        if key == "name" and draw(st.integers(0, 9)) > 0:
            value["name"] = draw(_NAMES)
        elif key == "arguments" and draw(st.integers(0, 9)) > 0:
            value["arguments"] = draw(_ARGUMENTS)
        elif key == "extra" and draw(st.booleans()):
            value[draw(st.sampled_from(["id", "type", "function"]))] = draw(_JSON)
    text = json.dumps(value, separators=draw(st.sampled_from([(", ", ": "), (",", ":")])))
    if draw(st.integers(0, 5)) == 0:
        text = text[: draw(st.integers(0, len(text)))]  # cut short: not JSON
    return draw(st.sampled_from([text, json.dumps(draw(_JSON)), text]))


@st.composite
def _blocks(draw) -> str:
    body = draw(_call_objects())
    opening = draw(st.sampled_from(["<tool_call>\n", "<tool_call>\n", "<tool_call>", "<tool_call>\n\n"]))
    closing = draw(st.sampled_from(["\n</tool_call>", "\n</tool_call>", "</tool_call>", "", " \n</tool_call>"]))
    return opening + body + closing


_PIECES = st.one_of(
    _blocks(),
    _blocks(),
    st.sampled_from(
        [
            "<think>",
            "</think>",
            "<think>\nplan\n</think>\n\n",
            "\n",
            "Sure.",
            " ",
            "<tool_call>",
            "</tool_call>",
            "<tool_call>\n",
            "\n</tool_call>",
            "<answer>ok</answer>",
        ]
    ),
)
_OUTPUTS = st.lists(_PIECES, max_size=8).map("".join)


@settings(max_examples=400, deadline=None)
@given(output=_OUTPUTS)
def test_training_and_evaluation_read_a_step_as_the_official_harness(output):
    visible, official_calls, official_history = official_step(output)
    assert split_reasoning(output)[1] == visible
    for style in ("qwen_fc", "paper"):
        parsed = parse_tool_calls(output, None, style)
        undecodable = any(isinstance(error, pe.UndecodableStepError) for error in parsed.errors)
        if official_calls is None:
            assert undecodable and parsed.well_formed_calls == ()
        else:
            assert not undecodable and call_strings(parsed.well_formed_calls) == official_calls
    ours = decode_official_step(visible)
    assert (None if ours is None else call_strings(ours)) == official_calls
    assert repr(bfcl_history_assistant_message(output)) == repr(official_history)


@pytest.mark.parametrize(
    "output, accepted",
    [
        ('<tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call>', ["ls()"]),
        ('<tool_call>{"name": "ls", "arguments": {}}</tool_call>', []),  # accepted by training before; not officially
        ('<tool_call>\n{"name": "ls", "arguments": {}}</tool_call>', []),
        ('<tool_call>\n{"name": "ls", "arguments": "{\\"a\\": 1}"}\n</tool_call>', ["ls(a=1)"]),
        ('<tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call>\n<tool_call>\n[1]\n</tool_call>', None),
        ('<think><tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call></think>Done.', []),
    ],
)
def test_known_cases(output, accepted):
    assert official_step(output)[1] == accepted
    parsed = parse_tool_calls(output, None)
    assert call_strings(parsed.well_formed_calls) == (accepted or [])
    assert parsed.has_format_error == (split_reasoning(output)[1].count("<tool_call>") > len(accepted or []))
