"""Between assistant text and environment calls, for evaluation: the official BFCL decoding rule.

Scores must match the official leaderboard, so evaluation decodes a step exactly as the official Qwen
FC handler does (`envtune_jax.chat.official_decode`, the same rule training parses with): calls are the
`<tool_call>\\n(.*?)\\n</tool_call>` blocks whose body is JSON; one block that is JSON but not a call makes
the whole step undecodable (no call; the harness ends the turn, the checker drops the step); names are
not checked here (an unknown name still counts as a call and executes to an error string).
The synthetic task uses its compact syntax. Rendering calls as text (the oracle) uses the chat renderer.
"""
from __future__ import annotations

from typing import Any, Sequence

from environments.base import ToolCall, ToolCallLike, ToolEnvironment
from environments.synthetic import parse_compact_calls
from envtune_jax.chat.bfcl_prompt import bfcl_history_assistant_message, history_renders_officially as _renders
from envtune_jax.chat.official_decode import decode_calls, split_reasoning

__all__ = ["UNDECODABLE_STEP", "decode_for_evaluation", "decode_official_step", "history_message",
           "history_renders_officially", "render_calls", "split_reasoning"]

UNDECODABLE_STEP = "the step's tool calls could not be decoded (official BFCL rule)"


def decode_official_step(text: str) -> list[ToolCall] | None:
    """The calls of one step's visible text under the official rule, or None when the step is undecodable."""
    calls = decode_calls(text)
    return None if calls is None else [ToolCall(call.name, call.arguments) for call in calls]


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


def history_message(output: str, call_syntax: str = "qwen_json") -> dict[str, Any]:
    """The assistant message kept in the history after a step whose whole generated text is `output`:
    the official harness's (qwen_json), or the text as written (the synthetic task's compact syntax)."""
    if call_syntax == "compact":
        return {"role": "assistant", "content": output}
    return bfcl_history_assistant_message(output)


def history_renders_officially(message: dict[str, Any], call_syntax: str = "qwen_json") -> bool:
    """Whether the official formatter can render this kept message (always, for the compact syntax)."""
    return call_syntax == "compact" or _renders(message)
