"""Chat messages as plain dicts (OpenAI style) and their validation.

A message is `{"role": "system" | "user" | "assistant" | "tool", "content": str}`; an assistant message
may add `"tool_calls": [{"name": str, "arguments": <JSON value>}, ...]` (a call may also be wrapped as
`{"function": {...}}`; string arguments are written as they are, any other value as JSON, as the official
harness keeps whatever the model wrote) and `"reasoning_content": str`; a tool message may add `"name"`
(ignored).
`validate_messages` rejects anything else with a `MessageError` that names the message and the field.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
Message = Mapping[str, Any]


class MessageError(ValueError):
    """A chat message is malformed; the message names its index and what is wrong."""


def _check_tool_call(call: Any, where: str) -> None:
    if not isinstance(call, Mapping):
        raise MessageError(f"{where}: a tool call must be a dict, got {type(call).__name__}")
    inner = call.get("function", call)
    if not isinstance(inner, Mapping):
        raise MessageError(f"{where}: 'function' must be a dict, got {type(inner).__name__}")
    if not isinstance(inner.get("name"), str):
        raise MessageError(f"{where}: a tool call needs a string 'name', got {inner.get('name')!r}")
    if "arguments" not in inner:
        raise MessageError(f"{where}: a tool call needs 'arguments' (a JSON value; a string is written as it is)")


def validate_message(message: Any, index: int = 0) -> None:
    """Raises MessageError unless `message` is a well-formed chat message."""
    where = f"message {index}"
    if not isinstance(message, Mapping):
        raise MessageError(f"{where}: expected a dict, got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise MessageError(f"{where}: role must be one of {list(ROLES)}, got {role!r}")
    if not isinstance(message.get("content"), str):
        raise MessageError(f"{where} ({role}): 'content' must be a string, got {message.get('content')!r}")
    if role != "assistant":
        for field in ("tool_calls", "reasoning_content"):
            if message.get(field):
                raise MessageError(f"{where}: only assistant messages may have '{field}', this one is {role}")
        return
    reasoning = message.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise MessageError(f"{where}: 'reasoning_content' must be a string, got {reasoning!r}")
    tool_calls = message.get("tool_calls")
    if tool_calls is None:
        return
    if not isinstance(tool_calls, Sequence) or isinstance(tool_calls, (str, bytes)):
        raise MessageError(f"{where}: 'tool_calls' must be a list, got {type(tool_calls).__name__}")
    for call_index, call in enumerate(tool_calls):
        _check_tool_call(call, f"{where} tool_calls[{call_index}]")


def validate_messages(messages: Sequence[Message]) -> None:
    """Validates every message of a conversation (see module docstring for the accepted shape)."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise MessageError(f"messages must be a list of dicts, got {type(messages).__name__}")
    for index, message in enumerate(messages):
        validate_message(message, index)


def validate_tools(tools: Sequence[Mapping[str, Any]]) -> None:
    """Tools are JSON-serialisable dicts (BFCL docs or OpenAI {"type": "function", ...} entries)."""
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise MessageError(f"tools must be a list of dicts, got {type(tools).__name__}")
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise MessageError(f"tool {index}: expected a dict, got {type(tool).__name__}")
