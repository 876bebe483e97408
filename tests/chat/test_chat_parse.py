"""Tool-call parsing: typed errors, both prompt styles, never crashing, round trips with the renderer."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envtune_jax.chat import parse_errors as pe
from envtune_jax.chat.parse import ParseResult, ToolCall, parse_tool_calls
from envtune_jax.chat.render import render_assistant_body

OFFERED = {"ls", "cd", "mv"}
KNOWN = OFFERED | {"sort"}


def _block(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


def _only_error(result: ParseResult, error_type: type) -> pe.ParseError:
    assert [type(error) for error in result.errors] == [error_type], result.errors
    assert result.errors[0].message and isinstance(result.errors[0].message, str)
    return result.errors[0]


def test_well_formed_qwen_fc_step():
    first, second = '{"name": "ls", "arguments": {"a": true}}', '{"name": "cd", "arguments": {"folder": "x"}}'
    text = "Sure.\n" + _block(first) + "\n" + _block(second)
    result = parse_tool_calls(text, OFFERED)
    assert result.calls == (ToolCall("ls", {"a": True}), ToolCall("cd", {"folder": "x"}))
    assert result.errors == () and result.num_call_blocks == 2 and result.answer_text == "Sure."


def test_qwen_fc_reasoning_split_like_the_official_handler():
    text = "<think>\nplan: list\n</think>\n\n" + _block('{"name": "ls", "arguments": {}}')
    result = parse_tool_calls(text, OFFERED)
    assert result.reasoning == "plan: list" and len(result.calls) == 1
    # A call written inside the reasoning is not a call.
    inside = parse_tool_calls("<think>" + _block('{"name": "ls", "arguments": {}}') + "</think>Hello", OFFERED)
    assert inside.calls == () and inside.answer_text == "Hello"


UNDECODABLE = pe.UndecodableStepError


@pytest.mark.parametrize(
    "body, error_types, calls",
    [
        ('{"name": "ls", "arguments": {', [pe.InvalidJsonError], ()),  # skipped, as the harness skips it
        ('["ls", {}]', [pe.NotAnObjectError, UNDECODABLE], ()),
        ('{"arguments": {}}', [pe.MissingNameError, UNDECODABLE], ()),
        ('{"name": ["ls"], "arguments": {}}', [pe.MissingNameError, UNDECODABLE], ()),  # unhashable name
        ('{"name": "ls"}', [pe.MissingArgumentsError, UNDECODABLE], ()),
        ('{"name": "ls", "arguments": [1]}', [pe.ArgumentsNotObjectError, UNDECODABLE], ()),
        ('{"name": "ls", "arguments": "[1]"}', [pe.ArgumentsNotObjectError, UNDECODABLE], ()),
        (
            '{"name": "ls", "arguments": "{\\"a\\": 1}"}',
            [],
            (ToolCall("ls", {"a": 1}),),
        ),  # a JSON string holding an object
        ('{"name": "", "arguments": {}}', [pe.UnknownToolError], ()),  # decoded (the harness runs it), not offered
        ('{"name": 3, "arguments": {}}', [pe.UnknownToolError], ()),
        ('{"name": "rm_rf", "arguments": {}}', [pe.UnknownToolError], ()),
        ('{"name": "sort", "arguments": {}}', [pe.ToolNotOfferedError], ()),
    ],
)
def test_each_call_error_is_typed_and_readable(body, error_types, calls):
    result = parse_tool_calls(_block(body), OFFERED, known_tool_names=KNOWN)
    assert [type(error) for error in result.errors] == error_types, result.errors
    assert result.calls == calls and result.num_call_blocks == 1
    for error in result.errors:
        assert error.message and isinstance(error.message, str)
        assert error.kind == ("tool" if type(error) in (pe.UnknownToolError, pe.ToolNotOfferedError) else "format")
        if error.block_index is not None:
            assert error.block_index == 0 and error.message.startswith("Tool call #1")


def test_one_undecodable_block_drops_every_call_of_the_step():
    text = _block('{"name": "ls", "arguments": {}}') + "\n" + _block("[1]")
    result = parse_tool_calls(text, OFFERED)
    assert result.calls == result.well_formed_calls == ()
    assert [type(e) for e in result.errors] == [pe.NotAnObjectError, UNDECODABLE] and result.errors[0].block_index == 1


def test_offered_names_are_a_whitelist_and_nothing_is_evaluated():
    hostile = '{"name": "__import__(\'os\').system(\'touch /tmp/pwned\')", "arguments": {}}'
    result = parse_tool_calls(_block(hostile), OFFERED)
    _only_error(result, pe.UnknownToolError)
    assert result.well_formed_calls[0].name.startswith("__import__")  # kept as data, never run
    assert parse_tool_calls(_block('{"name": "sort", "arguments": {}}'), OFFERED).calls == ()
    assert parse_tool_calls(_block('{"name": "sort", "arguments": {}}'), None).calls == (ToolCall("sort", {}),)


def test_pathological_json_does_not_crash():
    for body in ("[" * 100_000, "1" * 10_000, '{"name": "ls", "arguments": {"x": NaN}}', "\x00\ud800"):
        result = parse_tool_calls(_block(body), OFFERED)
        assert isinstance(result, ParseResult)


def test_call_blocks_need_both_newlines_as_in_the_official_harness():
    _only_error(parse_tool_calls('<tool_call>\n{"name": "ls", "arguments": {}}', OFFERED), pe.UnmatchedTagError)
    for compact in (
        '<tool_call>{"name": "ls", "arguments": {}}</tool_call>',
        '<tool_call>\n{"name": "ls", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "ls", "arguments": {}}\n</tool_call>',
    ):
        result = parse_tool_calls(compact, OFFERED)
        assert result.calls == result.well_formed_calls == () and result.num_call_blocks == 1
        assert isinstance(_only_error(result, pe.MalformedBlockError), pe.MalformedBlockError)
    # An unclosed block runs on to the next closing tag, so the next block is lost too (not JSON together).
    text = '<tool_call>\n{"name": "ls", "arguments": {}}</tool_call>\n' + _block('{"name": "cd", "arguments": {}}')
    result = parse_tool_calls(text, OFFERED)
    assert result.calls == () and [type(e) for e in result.errors] == [pe.MalformedBlockError]


def test_paper_style_steps():
    think = "<think>\nI need the listing.\n</think>\n"
    good = parse_tool_calls(think + _block('{"name": "ls", "arguments": {}}'), OFFERED, "paper")
    assert good.errors == () and good.reasoning == "I need the listing." and good.calls == (ToolCall("ls", {}),)
    reply = parse_tool_calls(think + "<answer>\nAll done.\n</answer>", OFFERED, "paper")
    assert reply.errors == () and reply.answer_text == "All done." and reply.calls == ()
    cases = {
        _block('{"name": "ls", "arguments": {}}'): pe.MissingThinkError,
        think + "Sure!\n" + _block('{"name": "ls", "arguments": {}}'): pe.MixedTextError,
        think + "<answer>a</answer>" + _block('{"name": "ls", "arguments": {}}'): pe.AnswerWithToolCallsError,
        think: pe.MissingActionError,
        think + think + "<answer>a</answer>": pe.DuplicateBlockError,
        think + "<answer>a</answer><answer>b</answer>": pe.DuplicateBlockError,
        "<answer>a</answer>" + think: pe.BlockOrderError,
    }
    for text, error_type in cases.items():
        result = parse_tool_calls(text, OFFERED, "paper")
        assert error_type in [type(e) for e in result.errors], (text, result.errors)
        assert all(e.kind == "format" for e in result.errors) and result.has_format_error


# -- properties -------------------------------------------------------------------------------------
_TAGGY_TEXT = st.lists(
    st.sampled_from(
        list('ab {}[]":,\n\\')
        + [
            "<tool_call>",
            "</tool_call>",
            "<think>",
            "</think>",
            "<answer>",
            "</answer>",
            '"name"',
            '"arguments"',
            "ls",
        ]
    ),
    max_size=60,
).map("".join)
# Tag text inside a JSON string is ambiguous in this format (json.dumps does not escape '<'), so the
# generated strings avoid it; everything else, unicode and escapes included, must survive the trip.
_PLAIN_TEXT = st.text(max_size=12).filter(lambda t: not any(tag in t for tag in ("think>", "tool_call>", "answer>")))
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _PLAIN_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_PLAIN_TEXT, children, max_size=4),
    max_leaves=12,
)
# Names are written into the prompt unescaped (as Qwen's template does), so they are identifiers here.
_CALLS = st.builds(
    ToolCall,
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,19}", fullmatch=True),
    st.dictionaries(_PLAIN_TEXT, _JSON_VALUES, max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=200), _TAGGY_TEXT), style=st.sampled_from(["qwen_fc", "paper"]))
def test_arbitrary_text_never_crashes(text, style):
    result = parse_tool_calls(text, OFFERED, style, known_tool_names=KNOWN)
    assert len(result.calls) <= len(result.well_formed_calls) <= result.num_call_blocks <= text.count("<tool_call>")
    assert all(call.name in OFFERED and isinstance(call.arguments, dict) for call in result.calls)
    for error in result.errors:
        assert isinstance(error.message, str) and error.message


@settings(max_examples=200, deadline=None)
@given(calls=st.lists(_CALLS, min_size=1, max_size=4), text=st.text(max_size=30).filter(lambda t: "<" not in t))
def test_well_formed_calls_round_trip(calls, text):
    message = {"role": "assistant", "content": text, "tool_calls": [call.as_message_call() for call in calls]}
    qwen = parse_tool_calls(render_assistant_body(message, "qwen_fc"), None)
    assert qwen.calls == tuple(calls) and qwen.errors == () and qwen.answer_text == text.strip()
    paper_message = {**message, "content": "", "reasoning_content": text.strip() or "plan"}
    paper = parse_tool_calls(render_assistant_body(paper_message, "paper"), None, "paper")
    assert paper.calls == tuple(calls) and paper.errors == () and paper.reasoning == (text.strip() or "plan")
    assert json.loads(json.dumps([c.arguments for c in paper.calls])) == [c.arguments for c in calls]
