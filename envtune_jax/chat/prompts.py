"""System prompt texts: Qwen3's native tools block, the paper-style prompts (stage 1/2, stage 3/4), and the
stage 3/4 instructions as they read in each style.

The Qwen block is reproduced to the byte because models were trained on it and the official BFCL
handler renders it. The paper-style prompts are written here from the method's description: reasoning
in <think>, tool calls in <tool_call>, the reply in <answer>; stages 3/4 add two instructions (be
resourceful; ask the user rather than invent arguments or call unavailable tools). In the qwen_fc style
the same two instructions, worded without the paper style's tags, are the leading system message (the
official format puts a leading system message before its tools block).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from envtune_jax.chat.chat_config import PAPER_PROMPT_VARIANTS, PaperPromptVariant

QWEN_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
QWEN_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)


def tools_json_lines(tools: Sequence[Mapping[str, Any]]) -> str:
    """One `json.dumps(tool)` per line, each preceded by a newline (Python's default separators, ASCII)."""
    return "".join("\n" + json.dumps(tool) for tool in tools)


def qwen_tools_block(tools: Sequence[Mapping[str, Any]]) -> str:
    """Qwen3's native '# Tools' section listing `tools` inside <tools></tools>."""
    return QWEN_TOOLS_HEADER + tools_json_lines(tools) + QWEN_TOOLS_FOOTER


PAPER_ROLE = (
    "You are an agent that carries out the user's requests by calling the functions listed below. "
    "You work in steps; after each step that calls functions you receive their results."
)

PAPER_FORMAT = (
    "# Response format\n\n"
    "Every step you write has two parts and nothing else:\n"
    "1. Your reasoning about what to do next, inside <think></think> tags.\n"
    "2. Either one or more function calls, each a JSON object with the function name and its arguments inside "
    "its own <tool_call></tool_call> tags; or, when the request is done or you need something from the user, "
    "your reply to the user inside <answer></answer> tags.\n"
    "Never combine function calls and an answer in one step, and write no text outside these tags. "
    "Function results come back to you inside <tool_response></tool_response> tags.\n\n"
    "A step that calls a function:\n"
    "<think>\nwhat is needed and which function provides it\n</think>\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>\n\n'
    "A step that replies:\n"
    "<think>\nwhy the request is complete, or what is missing\n</think>\n"
    "<answer>\nyour message to the user\n</answer>"
)

_BE_RESOURCEFUL = (
    "- Be resourceful: when a value you need is not given, first try to find it with the available functions "
    "(listing, searching or looking it up) before concluding that it is missing.\n"
)
_ASK_RATHER_THAN_INVENT = (
    "- When the information cannot be obtained that way, or the function you would need is not available, "
    "ask the user {where} instead of guessing argument values or calling functions that do not exist."
)
PAPER_STAGE34_RULES = "# Guidelines\n\n" + _BE_RESOURCEFUL + _ASK_RATHER_THAN_INVENT.format(where="in your <answer>")
QWEN_FC_STAGE34_INSTRUCTIONS = (
    "# Guidelines\n\n" + _BE_RESOURCEFUL + _ASK_RATHER_THAN_INVENT.format(where="in your reply")
)


def qwen_fc_leading_instructions(variant: PaperPromptVariant) -> str | None:
    """The curriculum's instructions that open the qwen_fc system message: the stage 3/4 ones, or None."""
    if variant not in PAPER_PROMPT_VARIANTS:
        raise ValueError(f"paper prompt variant must be one of {list(PAPER_PROMPT_VARIANTS)}, got {variant!r}")
    return QWEN_FC_STAGE34_INSTRUCTIONS if variant == "stage34" else None


def paper_system_prompt(variant: PaperPromptVariant, tools: Sequence[Mapping[str, Any]]) -> str:
    """The paper-style system prompt for curriculum stages 1/2 ("stage12") or 3/4 ("stage34")."""
    if variant not in PAPER_PROMPT_VARIANTS:
        raise ValueError(f"paper prompt variant must be one of {list(PAPER_PROMPT_VARIANTS)}, got {variant!r}")
    sections = [PAPER_ROLE]
    if tools:
        listing = "<tools>" + tools_json_lines(tools) + "\n</tools>"
        sections.append("# Tools\n\nThe functions you can call, as JSON signatures:\n" + listing)
    sections.append(PAPER_FORMAT)
    if variant == "stage34":
        sections.append(PAPER_STAGE34_RULES)
    return "\n\n".join(sections)
