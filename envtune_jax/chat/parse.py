"""Parses one model step (decoded text) into tool calls, reasoning, the reply, and typed errors.

Only `json.loads` ever touches the model's text (through `loads_bounded`, which refuses bodies nested
past its limit): nothing is executed or evaluated. Calls are returned
only when well formed ({"name": str, "arguments": object}) and naming a tool offered this turn.
- "qwen_fc": reasoning is the text before the last </think> (as the official handler splits it); every
  <tool_call>…</tool_call> after it is a call; the remaining text is `answer_text`.
- "paper": the step must be <think>…</think> then either <tool_call> blocks or one <answer>…</answer>,
  with nothing but whitespace around them; deviations are format errors, calls are still decoded.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Collection

from envtune_jax.chat import parse_errors as pe
from envtune_jax.chat.chat_config import PromptStyle, PROMPT_STYLES
from envtune_jax.chat.render import render_tool_call
from envtune_jax.untrusted_json import loads_bounded

_QWEN_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_PAPER_BLOCK = re.compile(r"<(think|tool_call|answer)>(.*?)</\1>", re.DOTALL)
_QWEN_TAG = re.compile(r"</?tool_call>")
_PAPER_TAG = re.compile(r"</?(?:think|tool_call|answer)>")
_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """A decoded call: a function name and its JSON-object arguments."""

    name: str
    arguments: dict[str, Any]

    def as_message_call(self) -> dict[str, Any]:
        """The `{"name", "arguments"}` dict used in an assistant message's tool_calls."""
        return {"name": self.name, "arguments": self.arguments}

    def render(self) -> str:
        """'<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>', as the renderer writes calls."""
        return render_tool_call(self.as_message_call())


@dataclasses.dataclass(frozen=True)
class ParseResult:
    calls: tuple[ToolCall, ...]  # safe to execute: well formed and offered
    errors: tuple[pe.ParseError, ...]
    well_formed_calls: tuple[ToolCall, ...]  # every block that decoded, offered or not
    num_call_blocks: int  # <tool_call> blocks found (attempted calls)
    reasoning: str
    answer_text: str

    @property
    def format_errors(self) -> tuple[pe.ParseError, ...]:
        return tuple(error for error in self.errors if error.kind == "format")

    @property
    def has_format_error(self) -> bool:
        return bool(self.format_errors)

    def error_messages(self) -> str:
        """All error messages, one per line (what the environment shows the model)."""
        return "\n".join(error.message for error in self.errors)


def _json_type_name(value: Any) -> str:
    return "null" if value is None else _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _decode_call(body: str, block_index: int) -> ToolCall | pe.ParseError:
    try:
        value = loads_bounded(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and JsonTooDeepError are ValueErrors
        return pe.InvalidJsonError(block_index, body=body, reason=str(exc) or type(exc).__name__)
    if not isinstance(value, dict):
        return pe.NotAnObjectError(block_index, type_name=_json_type_name(value))
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        return pe.MissingNameError(block_index)
    if "arguments" not in value:
        return pe.MissingArgumentsError(block_index, name=name)
    if not isinstance(value["arguments"], dict):
        return pe.ArgumentsNotObjectError(block_index, name=name, type_name=_json_type_name(value["arguments"]))
    return ToolCall(name, value["arguments"])


def _gaps(text: str, matches: list[re.Match]) -> list[str]:
    """The pieces of `text` outside the matched blocks, in order."""
    cuts = [0, *(bound for match in matches for bound in match.span()), len(text)]
    return [text[cuts[i]:cuts[i + 1]] for i in range(0, len(cuts), 2)]


def _paper_layout_errors(matches: list[re.Match], gaps: list[str]) -> list[pe.ParseError]:
    errors: list[pe.ParseError] = []
    tags = [match.group(1) for match in matches]
    stray_text = "".join(_PAPER_TAG.sub("", gap) for gap in gaps)
    if stray_text.strip():
        errors.append(pe.MixedTextError(text=stray_text))
    if "think" not in tags:
        errors.append(pe.MissingThinkError())
    elif tags.count("think") > 1:
        errors.append(pe.DuplicateBlockError(tag="think"))
    elif tags[0] != "think":
        errors.append(pe.BlockOrderError())
    if tags.count("answer") > 1:
        errors.append(pe.DuplicateBlockError(tag="answer"))
    if "answer" in tags and "tool_call" in tags:
        errors.append(pe.AnswerWithToolCallsError())
    if "answer" not in tags and "tool_call" not in tags:
        errors.append(pe.MissingActionError())
    return errors


def parse_tool_calls(text: str, offered_tool_names: Collection[str] | None = None, style: PromptStyle = "qwen_fc",
                     known_tool_names: Collection[str] | None = None,
                     require_call_newlines: bool = False) -> ParseResult:
    """Parses a model step. `offered_tool_names` None accepts any name; a name outside it is a
    ToolNotOfferedError if it is in `known_tool_names` (e.g. withheld this turn), else an UnknownToolError.
    `require_call_newlines` accepts only '<tool_call>\\n…\\n</tool_call>' blocks, as the BFCL harness does."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {list(PROMPT_STYLES)}, got {style!r}")
    if not isinstance(text, str):
        raise TypeError(f"parse_tool_calls needs the decoded text as str, got {type(text).__name__}")
    errors: list[pe.ParseError] = []
    if style == "qwen_fc":
        reasoning, rest = "", text
        if "</think>" in text:
            pieces = text.split("</think>")
            reasoning, rest = pieces[0].rstrip("\n").split("<think>")[-1].lstrip("\n"), pieces[-1].lstrip("\n")
        matches = list(_QWEN_BLOCK.finditer(rest))
        gaps = _gaps(rest, matches)
        answer_text = "".join(gaps).strip()
        call_bodies = [match.group(1) for match in matches]
        stray_tags = [tag for gap in gaps for tag in _QWEN_TAG.findall(gap)]
    else:
        matches = list(_PAPER_BLOCK.finditer(text))
        gaps = _gaps(text, matches)
        bodies = {tag: [m.group(2) for m in matches if m.group(1) == tag] for tag in ("think", "answer", "tool_call")}
        reasoning = bodies["think"][0].strip() if bodies["think"] else ""
        answer_text = bodies["answer"][0].strip() if bodies["answer"] else ""
        call_bodies = bodies["tool_call"]
        stray_tags = [tag for gap in gaps for tag in _PAPER_TAG.findall(gap)]
        errors.extend(_paper_layout_errors(matches, gaps))
    errors.extend(pe.UnmatchedTagError(tag=tag) for tag in stray_tags)

    calls: list[ToolCall] = []
    well_formed: list[ToolCall] = []
    for block_index, body in enumerate(call_bodies):
        if require_call_newlines and not (len(body) >= 2 and body.startswith("\n") and body.endswith("\n")):
            errors.append(pe.MalformedBlockError(block_index))
            continue
        decoded = _decode_call(body, block_index)
        if isinstance(decoded, pe.ParseError):
            errors.append(decoded)
            continue
        well_formed.append(decoded)
        if offered_tool_names is not None and decoded.name not in offered_tool_names:
            known = known_tool_names is not None and decoded.name in known_tool_names
            errors.append((pe.ToolNotOfferedError if known else pe.UnknownToolError)(block_index, name=decoded.name))
            continue
        calls.append(decoded)
    return ParseResult(tuple(calls), tuple(errors), tuple(well_formed), len(call_bodies), reasoning, answer_text)
