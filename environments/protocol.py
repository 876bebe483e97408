"""Between assistant text and the conversation, for evaluation: what the official BFCL harness keeps.

Scores must match the official leaderboard. A step's calls are decoded by its environment
(`ToolEnvironment.decode_step`: for BFCL the official Qwen FC rule of `envtune_jax.chat.official_decode`,
the same rule training parses with); `decode_official_step` is that rule for recorded outputs (replay).
The assistant message kept in the history is the official handler's (`history_message`), and rendering
calls as text (the oracle) uses the chat renderer; the synthetic task uses its compact syntax.
"""

from __future__ import annotations

from typing import Any, Sequence

from envtune_jax.chat.bfcl_prompt import bfcl_history_assistant_message
from envtune_jax.chat.bfcl_prompt import history_renders_officially as _renders
from envtune_jax.chat.official_decode import decode_calls, split_reasoning
from envtune_jax.environments.base import ToolCall, ToolCallLike

__all__ = ["decode_official_step", "history_message", "history_renders_officially", "render_calls", "split_reasoning"]


def decode_official_step(text: str) -> list[ToolCall] | None:
    """The calls of one step's visible text under the official rule, or None when the step is undecodable."""
    calls = decode_calls(text)
    return None if calls is None else [ToolCall(call.name, call.arguments) for call in calls]


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
