"""Parses one model step (decoded text) into tool calls, reasoning, the reply, and typed errors.

The calls are exactly those the official BFCL harness would run (`official_decode`: only `json.loads`
touches the model's text, nothing is executed or evaluated), so training rewards no call that evaluation
would drop. On top of that rule the parser explains, as typed errors, everything the harness passes
over in silence or rejects: blocks without the required newlines, bodies that are not JSON, values that
are not calls (which make the whole step undecodable), tags without their pair.
- "qwen_fc": reasoning is the text before the last </think>; the calls and the reply (`answer_text`:
  the visible text outside the call blocks) come from the text after it.
- "paper": the step must be <think>…</think> then either <tool_call> blocks or one <answer>…</answer>,
  with nothing but whitespace around them; deviations are format errors, calls are still decoded.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Collection

from envtune_jax.chat import parse_errors as pe
from envtune_jax.chat.chat_config import PROMPT_STYLES, PromptStyle
from envtune_jax.chat.official_decode import CallBlock, ToolCall, calls_of_blocks, scan_blocks, split_reasoning

_LOOSE_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_PAPER_BLOCK = re.compile(r"<(think|tool_call|answer)>(.*?)</\1>", re.DOTALL)
_CALL_TAG = re.compile(r"</?tool_call>")
_PAPER_TAG = re.compile(r"</?(?:think|answer)>")
_ANY_PAPER_TAG = re.compile(r"</?(?:think|tool_call|answer)>")
_OPENING = "<tool_call>"

__all__ = ["ParseResult", "ToolCall", "parse_tool_calls"]


@dataclasses.dataclass(frozen=True)
class ParseResult:
    calls: tuple[ToolCall, ...]  # safe to execute: decoded by the official rule and offered
    errors: tuple[pe.ParseError, ...]
    well_formed_calls: tuple[ToolCall, ...]  # every call the official rule decodes, offered or not
    num_call_blocks: int  # <tool_call> opening tags in the visible text (attempted calls)
    reasoning: str
    answer_text: str

    @property
    def format_errors(self) -> tuple[pe.ParseError, ...]:
        return tuple(error for error in self.errors if error.kind == "format")

    @property
    def has_format_error(self) -> bool:
        return bool(self.format_errors)

    def error_messages(self) -> str:
        """All error messages, one per line."""
        return "\n".join(error.message for error in self.errors)


def _gaps(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, str]]:
    """The pieces of `text` outside the given (sorted, disjoint) spans, in order, with their offsets."""
    cuts = [0, *(bound for span in spans for bound in span), len(text)]
    return [(cuts[i], text[cuts[i] : cuts[i + 1]]) for i in range(0, len(cuts), 2)]


def _paper_layout_errors(matches: list[re.Match], gaps: list[str]) -> list[pe.ParseError]:
    errors: list[pe.ParseError] = []
    tags = [match.group(1) for match in matches]
    stray_text = "".join(_ANY_PAPER_TAG.sub("", gap) for gap in gaps)
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


def _block_errors(visible: str, blocks: list[CallBlock], ordinal: dict[int, int]) -> list[tuple[int, pe.ParseError]]:
    """(offset, error) for every official block that yields no call and every call tag outside the blocks."""
    found: list[tuple[int, pe.ParseError]] = []
    for block in blocks:
        index = ordinal[block.start]
        if block.problem is not None:
            found.append((block.start, dataclasses.replace(block.problem, block_index=index)))
        elif block.call is None and _CALL_TAG.search(block.body):  # ran on into a later block
            found.append((block.start, pe.MalformedBlockError(index)))
        elif block.call is None:
            found.append((block.start, pe.InvalidJsonError(index, body=block.body, reason=block.json_error)))
    for offset, gap in _gaps(visible, [(block.start, block.end) for block in blocks]):
        loose = list(_LOOSE_BLOCK.finditer(gap))
        found += [(offset + m.start(), pe.MalformedBlockError(ordinal[offset + m.start()])) for m in loose]
        for piece_offset, piece in _gaps(gap, [m.span() for m in loose]):
            found += [
                (offset + piece_offset + m.start(), pe.UnmatchedTagError(tag=m.group()))
                for m in _CALL_TAG.finditer(piece)
            ]
    return found


def parse_tool_calls(
    text: str,
    offered_tool_names: Collection[str] | None = None,
    style: PromptStyle = "qwen_fc",
    known_tool_names: Collection[str] | None = None,
) -> ParseResult:
    """Parses a model step. `offered_tool_names` None accepts any name; a name outside it is a
    ToolNotOfferedError if it is in `known_tool_names` (e.g. withheld this turn), else an UnknownToolError."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {list(PROMPT_STYLES)}, got {style!r}")
    if not isinstance(text, str):
        raise TypeError(f"parse_tool_calls needs the decoded text as str, got {type(text).__name__}")
    reasoning, visible = split_reasoning(text)
    blocks = scan_blocks(visible)
    ordinal = {match.start(): i for i, match in enumerate(re.finditer(re.escape(_OPENING), visible))}
    errors: list[pe.ParseError] = []
    if style == "qwen_fc":
        answer_text = "".join(gap for _, gap in _gaps(visible, [(b.start, b.end) for b in blocks])).strip()
    else:
        matches = list(_PAPER_BLOCK.finditer(text))
        gaps = [gap for _, gap in _gaps(text, [match.span() for match in matches])]
        bodies = {tag: [m.group(2) for m in matches if m.group(1) == tag] for tag in ("think", "answer")}
        reasoning = bodies["think"][0].strip() if bodies["think"] else ""
        answer_text = bodies["answer"][0].strip() if bodies["answer"] else ""
        errors.extend(_paper_layout_errors(matches, gaps))
        errors.extend(pe.UnmatchedTagError(tag=tag) for gap in gaps for tag in _PAPER_TAG.findall(gap))
    errors.extend(error for _, error in sorted(_block_errors(visible, blocks, ordinal), key=lambda item: item[0]))

    decoded = calls_of_blocks(blocks)
    if decoded is None:  # the harness runs none of this step's calls
        errors.append(pe.UndecodableStepError())
        return ParseResult((), tuple(errors), (), len(ordinal), reasoning, answer_text)
    calls: list[ToolCall] = []
    for block in blocks:
        call = block.call
        if call is None:
            continue
        if offered_tool_names is not None and call.name not in offered_tool_names:
            known = known_tool_names is not None and call.name in known_tool_names
            errors.append(
                (pe.ToolNotOfferedError if known else pe.UnknownToolError)(ordinal[block.start], name=call.name)
            )
            continue
        calls.append(call)
    return ParseResult(tuple(calls), tuple(errors), decoded, len(ordinal), reasoning, answer_text)
