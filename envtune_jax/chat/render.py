"""Renders chat messages and tools to the exact prompt text of a prompt style.

"qwen_fc" reproduces, byte for byte, the official BFCL `QwenFCHandler._format_prompt` (Qwen3's chat
template written out in Python), including its details: the system message is merged into the tools
block (with paper_variant "stage34" the curriculum's stage 3/4 instructions open that system message); consecutive
tool results share one user message; an assistant message after the last real user
query shows its reasoning in <think> (always, if it is the last message); a tool call that equals the
first call of its message gets a leading newline only when the message has text.
"paper" uses the same ChatML frame and tool-result grouping, the paper system prompt, and renders an
assistant step as "<think>\\n…\\n</think>\\n" followed by its <tool_call> blocks or one <answer> block.

`render_environment_segment` renders only what follows a sampled assistant message (which ends with
<|im_end|>) up to the next generation prompt, so a token-level conversation can append it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from envtune_jax.chat.chat_config import PROMPT_STYLES, PaperPromptVariant, PromptStyle
from envtune_jax.chat.messages import Message, MessageError, validate_messages, validate_tools
from envtune_jax.chat.prompts import paper_system_prompt, qwen_fc_leading_instructions, qwen_tools_block
from envtune_jax.chat.special_tokens import IM_END, IM_START

GENERATION_PROMPT = f"{IM_START}assistant\n"


def render_tool_call(call: Mapping[str, Any]) -> str:
    """One call as '<tool_call>\\n{"name": "...", "arguments": {...}}\\n</tool_call>' (string arguments verbatim)."""
    call = call.get("function", call)
    arguments = call["arguments"]
    arguments_json = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return '<tool_call>\n{"name": "' + call["name"] + '", "arguments": ' + arguments_json + "}\n</tool_call>"


def _is_real_query(message: Message) -> bool:
    content = message["content"]
    is_tool_response = content.startswith("<tool_response>") and content.endswith("</tool_response>")
    return message["role"] == "user" and not is_tool_response


def _last_query_index(messages: Sequence[Message]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if _is_real_query(messages[index]):
            return index
    return len(messages) - 1


def _split_reasoning(message: Message) -> tuple[str, str]:
    """(reasoning, content): `reasoning_content` if set, else the text before the last </think> of content."""
    content = message["content"]
    reasoning = message.get("reasoning_content") or ""
    if not reasoning and "</think>" in content:
        pieces = content.split("</think>")
        reasoning = pieces[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = pieces[-1].lstrip("\n")
    return reasoning, content


def _qwen_assistant_body(message: Message, show_reasoning_if_any: bool, is_last: bool) -> str:
    reasoning, content = _split_reasoning(message)
    if show_reasoning_if_any and (is_last or reasoning):
        body = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
    else:
        body = content
    calls = message.get("tool_calls") or []
    for call in calls:
        # The reference decides the separator by equality with the first call, not by position.
        body += ("\n" if content else "") if call == calls[0] else "\n"
        body += render_tool_call(call)
    return body


def _paper_assistant_body(message: Message) -> str:
    calls = message.get("tool_calls") or []
    content = message["content"]
    if calls and content:
        raise MessageError("paper style: an assistant step has either tool calls or an answer, not both")
    reasoning = message.get("reasoning_content") or ""
    body = "<think>\n" + reasoning.strip("\n") + "\n</think>\n" if reasoning else ""
    if calls:
        return body + "\n".join(render_tool_call(call) for call in calls)
    return body + "<answer>\n" + content + "\n</answer>"


def _system_header(
    messages: Sequence[Message], tools: Sequence[Message], style: PromptStyle, paper_variant: PaperPromptVariant
) -> str:
    leading_system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    if style == "qwen_fc":
        instructions = qwen_fc_leading_instructions(paper_variant)
        if instructions is not None:
            leading_system = instructions if leading_system is None else f"{instructions}\n\n{leading_system}"
    if style == "paper":
        prefix = leading_system + "\n\n" if leading_system is not None else ""
        return f"{IM_START}system\n{prefix}{paper_system_prompt(paper_variant, tools)}{IM_END}\n"
    if tools:
        prefix = leading_system + "\n\n" if leading_system is not None else ""
        return f"{IM_START}system\n{prefix}{qwen_tools_block(tools)}{IM_END}\n"
    return f"{IM_START}system\n{leading_system}{IM_END}\n" if leading_system is not None else ""


def _render_range(messages: Sequence[Message], start: int, style: PromptStyle) -> str:
    """Renders messages[start:], each in the context of the whole list (neighbours, last query)."""
    last_query = _last_query_index(messages)
    parts: list[str] = []
    for index in range(start, len(messages)):
        message, role = messages[index], messages[index]["role"]
        if role == "user" or (role == "system" and index != 0):
            parts.append(f"{IM_START}{role}\n{message['content']}{IM_END}\n")
        elif role == "assistant":
            if style == "paper":
                body = _paper_assistant_body(message)
            else:
                body = _qwen_assistant_body(message, index > last_query, index == len(messages) - 1)
            parts.append(f"{IM_START}assistant\n{body}{IM_END}\n")
        elif role == "tool":
            if index == 0 or messages[index - 1]["role"] != "tool":
                parts.append(f"{IM_START}user")
            parts.append(f"\n<tool_response>\n{message['content']}\n</tool_response>")
            if index == len(messages) - 1 or messages[index + 1]["role"] != "tool":
                parts.append(f"{IM_END}\n")
    return "".join(parts)


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {list(PROMPT_STYLES)}, got {style!r}")


def render_messages(
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] = (),
    style: PromptStyle = "qwen_fc",
    add_generation_prompt: bool = True,
    paper_variant: PaperPromptVariant = "stage12",
) -> str:
    """The full prompt text of a conversation; ends with '<|im_start|>assistant\\n' if add_generation_prompt."""
    _check_style(style)
    validate_messages(messages)
    validate_tools(tools)
    text = _system_header(messages, tools, style, paper_variant) + _render_range(messages, 0, style)
    return text + GENERATION_PROMPT if add_generation_prompt else text


def render_assistant_body(message: Message, style: PromptStyle = "qwen_fc") -> str:
    """The text of one assistant message between '<|im_start|>assistant\\n' and '<|im_end|>', as it renders
    in the middle of a conversation (qwen_fc: not after the last query, so reasoning is not shown)."""
    _check_style(style)
    validate_messages([message])
    if message["role"] != "assistant":
        raise MessageError(f"render_assistant_body needs an assistant message, got {message['role']!r}")
    return _paper_assistant_body(message) if style == "paper" else _qwen_assistant_body(message, False, False)


def render_environment_segment(
    messages: Sequence[Message], style: PromptStyle = "qwen_fc", add_generation_prompt: bool = True
) -> str:
    """What follows a sampled assistant message's <|im_end|>: '\\n', the rendered `messages` (tool results,
    hints, the next user turn), then the generation prompt. Equal to the matching slice of render_messages."""
    _check_style(style)
    validate_messages(messages)
    if any(message["role"] == "assistant" for message in messages):
        raise MessageError("environment messages cannot include assistant messages; append sampled tokens instead")
    context = [{"role": "assistant", "content": ""}, *messages]
    text = "\n" + _render_range(context, 1, style)
    return text + GENERATION_PROMPT if add_generation_prompt else text
