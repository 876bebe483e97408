"""Typed errors found while parsing a model step; each has a human-readable `message` for the model.

`kind` says what broke: "format" (tags, layout, JSON, call object shape: the step does not follow the
protocol) or "tool" (a well-formed call to a tool that cannot be used this turn). `block_index` is the
position of the offending <tool_call> block among the step's blocks, or None for step-level problems.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Literal

ErrorKind = Literal["format", "tool"]


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclasses.dataclass(frozen=True)
class ParseError(abc.ABC):
    """Base class of every parse error."""

    kind: ClassVar[ErrorKind] = "format"
    block_index: int | None = None

    @property
    @abc.abstractmethod
    def message(self) -> str:
        """What is wrong, in words the model can act on."""

    def _where(self) -> str:
        return f"Tool call #{self.block_index + 1}" if self.block_index is not None else "Your response"


@dataclasses.dataclass(frozen=True)
class InvalidJsonError(ParseError):
    body: str = ""
    reason: str = ""

    @property
    def message(self) -> str:
        return f"{self._where()} is not valid JSON ({self.reason}): {_clip(self.body)!r}"


@dataclasses.dataclass(frozen=True)
class NotAnObjectError(ParseError):
    type_name: str = ""

    @property
    def message(self) -> str:
        expected = '{"name": ..., "arguments": {...}}'
        return f"{self._where()} must be a JSON object {expected}, got a JSON {self.type_name}."


@dataclasses.dataclass(frozen=True)
class MissingNameError(ParseError):
    @property
    def message(self) -> str:
        return f'{self._where()} has no "name" string naming the function to call.'


@dataclasses.dataclass(frozen=True)
class MissingArgumentsError(ParseError):
    name: str = ""

    @property
    def message(self) -> str:
        return f'{self._where()} to {self.name!r} has no "arguments" object (use {{}} when there are none).'


@dataclasses.dataclass(frozen=True)
class ArgumentsNotObjectError(ParseError):
    name: str = ""
    type_name: str = ""

    @property
    def message(self) -> str:
        return f'{self._where()} to {self.name!r}: "arguments" must be a JSON object, got a JSON {self.type_name}.'


@dataclasses.dataclass(frozen=True)
class UnknownToolError(ParseError):
    kind: ClassVar[ErrorKind] = "tool"
    name: str = ""

    @property
    def message(self) -> str:
        return f"{self._where()}: there is no function named {_clip(self.name, 60)!r}."


@dataclasses.dataclass(frozen=True)
class ToolNotOfferedError(ParseError):
    kind: ClassVar[ErrorKind] = "tool"
    name: str = ""

    @property
    def message(self) -> str:
        return f"{self._where()}: the function {self.name!r} is not available at this point."


@dataclasses.dataclass(frozen=True)
class MalformedBlockError(ParseError):
    """A <tool_call> block without the newline right after the opening and before the closing tag."""

    @property
    def message(self) -> str:
        return f"{self._where()} must be written as <tool_call>\\n{{json}}\\n</tool_call>."


@dataclasses.dataclass(frozen=True)
class UndecodableStepError(ParseError):
    """One block parsed as JSON but is not a call: the official harness then runs none of the step's calls."""

    @property
    def message(self) -> str:
        return (
            "None of the tool calls in your response were run: every <tool_call> block must hold "
            '{"name": ..., "arguments": {...}}.'
        )


@dataclasses.dataclass(frozen=True)
class UnmatchedTagError(ParseError):
    tag: str = ""

    @property
    def message(self) -> str:
        missing = "opening" if self.tag.startswith("</") else "closing"
        return f"Your response has a {self.tag} tag without its matching {missing} tag."


@dataclasses.dataclass(frozen=True)
class MixedTextError(ParseError):
    text: str = ""

    @property
    def message(self) -> str:
        outside = _clip(self.text.strip())
        return f"Your response has text outside the <think>, <tool_call> and <answer> tags: {outside!r}"


@dataclasses.dataclass(frozen=True)
class MissingThinkError(ParseError):
    @property
    def message(self) -> str:
        return "Your response must start with your reasoning inside <think></think> tags."


@dataclasses.dataclass(frozen=True)
class DuplicateBlockError(ParseError):
    tag: str = ""

    @property
    def message(self) -> str:
        return f"Your response has more than one <{self.tag}> block; write exactly one."


@dataclasses.dataclass(frozen=True)
class BlockOrderError(ParseError):
    @property
    def message(self) -> str:
        return "Your response must put <think> first, then the <tool_call> blocks or the <answer>."


@dataclasses.dataclass(frozen=True)
class AnswerWithToolCallsError(ParseError):
    @property
    def message(self) -> str:
        return "Your response has both tool calls and an <answer>; a step does one or the other."


@dataclasses.dataclass(frozen=True)
class MissingActionError(ParseError):
    @property
    def message(self) -> str:
        return "After <think>, your response needs either <tool_call> blocks or an <answer>."
