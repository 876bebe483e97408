"""Between assistant text and environment calls, for evaluation: the official BFCL decoding rule.

Scores must match the official leaderboard, so evaluation decodes a step exactly as the official Qwen
FC handler does (`QwenFCHandler.decode_execute` + `convert_to_function_call`), quirks included:
- calls are the `<tool_call>\\n(.*?)\\n</tool_call>` matches (newlines required) whose body is valid JSON;
  bodies that are not JSON are skipped silently;
- the whole step is undecodable (no call at all; the harness ends the turn, the checker drops the step)
  if any decoded body is not an object, lacks "name" or "arguments", has an unhashable name, or has
  "arguments" that is neither an object nor a JSON string holding an object;
- names are not checked here (an unknown name still counts as a call and executes to an error string).
Training uses the chat package's richer parser (typed format errors for feedback); the synthetic task
uses its compact syntax. Rendering calls as text (the oracle) uses the chat package's renderer.
"""
from __future__ import annotations

import re
from typing import Sequence

from environments.base import ToolCall, ToolCallLike, ToolEnvironment
from environments.synthetic import parse_compact_calls
from envtune_jax.untrusted_json import loads_bounded

OFFICIAL_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)
UNDECODABLE_STEP = "the step's tool calls could not be decoded (official BFCL rule)"


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, visible text) as the official handler splits a generation on the last </think>."""
    if "</think>" not in text:
        return "", text
    pieces = text.split("</think>")
    return pieces[0].rstrip("\n").split("<think>")[-1].lstrip("\n"), pieces[-1].lstrip("\n")


def decode_official_step(text: str) -> list[ToolCall] | None:
    """The calls of one step under the official rule, or None when the whole step is undecodable."""
    bodies = []
    for match in OFFICIAL_TOOL_CALL_BLOCK.findall(text):
        try:
            bodies.append(loads_bounded(match))
        except (ValueError, RecursionError):
            continue
    calls = []
    for body in bodies:
        if type(body) != dict or "name" not in body or "arguments" not in body:  # noqa: E721
            return None
        name, arguments = body["name"], body["arguments"]
        try:
            hash(name)
            if type(arguments) == str:  # noqa: E721
                arguments = loads_bounded(arguments)
        except (TypeError, ValueError, RecursionError):
            return None
        if not isinstance(arguments, dict):
            return None
        calls.append(ToolCall(str(name), arguments))
    return calls


def decode_for_evaluation(text: str, env: ToolEnvironment) -> tuple[list[ToolCall], list[str]]:
    """(calls, format errors) of one step, by the environment's call syntax."""
    if env.call_syntax == "compact":
        return parse_compact_calls(text, sorted(env.offered_tool_names()))
    calls = decode_official_step(text)
    if calls is None:
        return [], [UNDECODABLE_STEP]
    return calls, []


def render_calls(calls: Sequence[ToolCallLike], call_syntax: str = "qwen_json") -> str:
    """Assistant text that makes exactly these calls (what the oracle policy writes)."""
    if call_syntax == "compact":
        if len(calls) > 1:
            raise ValueError("the compact syntax writes one call per step")
        return "".join(f"{call.name} {call.arguments['value']}" for call in calls)
    from envtune_jax.chat.render import render_tool_call

    return "\n".join(render_tool_call({"name": call.name, "arguments": dict(call.arguments)}) for call in calls)


def history_message(reasoning: str, visible_text: str, calls: Sequence[ToolCallLike]) -> dict:
    """The assistant message the official harness keeps in the history after a step."""
    from envtune_jax.chat.bfcl_prompt import bfcl_history_assistant_message

    decoded = [{"name": call.name, "arguments": dict(call.arguments)} for call in calls]
    return bfcl_history_assistant_message(reasoning, visible_text, decoded)
