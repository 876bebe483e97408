"""How the official BFCL harness reads one Qwen FC model step: the single rule training and evaluation share.

Reproduces bfcl_eval 2026.3.23 `QwenFCHandler` (`_parse_query_response_prompting`, `_extract_tool_calls`,
`decode_execute` with `convert_to_function_call`), quirks included, using only `json.loads`:
- the reasoning is the text before the last `</think>` (after the last `<think>` in it), the visible text
  what follows that `</think>` (leading newlines dropped); without `</think>` everything is visible;
- a call block is a match of `<tool_call>\\n(.*?)\\n</tool_call>` (both newlines required, shortest body);
  a body that `json.loads` rejects is skipped without a word;
- the calls are read from the visible text only. The whole step is undecodable (nothing runs, the turn
  ends) if any remaining body is not an object, lacks "name" or "arguments", has an unhashable name, or
  has arguments that are neither an object nor a JSON string holding one. A name that is not a string
  is written as Python's `str()` of it, as the harness's call string does;
- the history keeps the parsed JSON of every block of the whole output, reasoning included
  (`extract_json_blocks`); see `bfcl_prompt.bfcl_history_assistant_message`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from envtune_jax.chat import parse_errors as pe
from envtune_jax.untrusted_json import loads_bounded

TOOL_CALL_BLOCK = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)
_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """A decoded call: a function name and its JSON-object arguments."""

    name: str
    arguments: dict[str, Any]

    def as_message_call(self) -> dict[str, Any]:
        """The `{"name", "arguments"}` dict used in an assistant message's tool_calls."""
        return {"name": self.name, "arguments": self.arguments}


class _Unparsed:
    def __repr__(self) -> str:
        return "UNPARSED"


UNPARSED = _Unparsed()


@dataclasses.dataclass(frozen=True)
class CallBlock:
    """One official block of a text: its span, body, and what became of it."""

    start: int  # offset of its "<tool_call>" in the text
    end: int
    body: str
    value: Any = UNPARSED  # the parsed JSON; UNPARSED when json.loads rejected the body (skipped)
    json_error: str = ""  # why json.loads rejected it
    call: ToolCall | None = None  # the call, when the value is a usable call
    problem: pe.ParseError | None = None  # why a parsed value is not a call (makes the step undecodable)


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, visible text), split on the last </think> as the official handler does."""
    if "</think>" not in text:
        return "", text
    pieces = text.split("</think>")
    return pieces[0].rstrip("\n").split("<think>")[-1].lstrip("\n"), pieces[-1].lstrip("\n")


def json_type_name(value: Any) -> str:
    return "null" if value is None else _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _load(body: str) -> tuple[Any, str]:
    try:  # json.loads, refusing bodies nested past MAX_JSON_DEPTH at any stack depth (envtune_jax.untrusted_json)
        return loads_bounded(body), ""
    except Exception as exc:  # the harness skips a body whatever json.loads raises (bad JSON, depth, huge ints)
        return UNPARSED, str(exc) or type(exc).__name__


def extract_json_blocks(text: str) -> list[Any]:
    """The parsed JSON of every official block of `text` that parses, as parsed (`_extract_tool_calls`)."""
    values = (_load(match)[0] for match in TOOL_CALL_BLOCK.findall(text))
    return [value for value in values if value is not UNPARSED]


def call_of(value: Any) -> ToolCall | pe.ParseError:
    """The call a parsed block value stands for, or the reason the harness cannot decode it."""
    if type(value) != dict:  # noqa: E721 (the harness checks the exact type)
        return pe.NotAnObjectError(type_name=json_type_name(value))
    if "name" not in value:
        return pe.MissingNameError()
    name = value["name"]
    try:
        hash(name)
    except TypeError:
        return pe.MissingNameError()
    if "arguments" not in value:
        return pe.MissingArgumentsError(name=str(name))
    arguments = value["arguments"]
    if type(arguments) == str:  # noqa: E721
        arguments, _ = _load(arguments)
        if type(arguments) != dict:  # noqa: E721
            return pe.ArgumentsNotObjectError(name=str(name), type_name="string that is not a JSON object")
    elif not isinstance(arguments, dict):
        return pe.ArgumentsNotObjectError(name=str(name), type_name=json_type_name(arguments))
    return ToolCall(str(name), arguments)


def scan_blocks(visible: str) -> list[CallBlock]:
    """Every official block of the visible text, parsed and checked."""
    blocks = []
    for match in TOOL_CALL_BLOCK.finditer(visible):
        body = match.group(1)
        value, json_error = _load(body)
        if value is UNPARSED:
            blocks.append(CallBlock(match.start(), match.end(), body, json_error=json_error))
            continue
        decoded = call_of(value)
        if isinstance(decoded, ToolCall):
            blocks.append(CallBlock(match.start(), match.end(), body, value, call=decoded))
        else:
            blocks.append(CallBlock(match.start(), match.end(), body, value, problem=decoded))
    return blocks


def calls_of_blocks(blocks: list[CallBlock]) -> tuple[ToolCall, ...] | None:
    """The step's calls, or None when one parsed block is not a usable call (the step is undecodable)."""
    if any(block.problem is not None for block in blocks):
        return None
    return tuple(block.call for block in blocks if block.call is not None)


def decode_calls(visible: str) -> tuple[ToolCall, ...] | None:
    """The calls of a step's visible text under the official rule; None when the step is undecodable."""
    return calls_of_blocks(scan_blocks(visible))
