"""The chat protocol's configuration: which prompt style, and which curriculum prompt (stage 1/2 or 3/4)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

# "qwen_fc": Qwen3's native function-calling format, byte-identical to the official BFCL Qwen FC handler.
# "paper":   the Environment Tuning format: <think> reasoning, then <tool_call> blocks or one <answer>.
PromptStyle = Literal["qwen_fc", "paper"]
PROMPT_STYLES: tuple[str, ...] = ("qwen_fc", "paper")

# Stages 1-2 and stages 3-4 of the curriculum use different prompts: "stage34" adds two instructions (be
# resourceful; ask the user rather than invent arguments). In the paper style they are part of its system
# prompt; in the qwen_fc style they are the leading system message, which that format places before the
# tools block ("stage12" leaves the official qwen_fc prompt untouched).
PaperPromptVariant = Literal["stage12", "stage34"]
PAPER_PROMPT_VARIANTS: tuple[str, ...] = ("stage12", "stage34")


@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """How conversations are rendered and parsed (`chat:` section of a YAML config)."""

    style: PromptStyle = "qwen_fc"
    paper_variant: PaperPromptVariant = "stage12"  # read in both styles (see above)

    FIELD_USE: ClassVar[tuple] = ()  # every field is read in both styles

    def __post_init__(self) -> None:
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"chat.style must be one of {list(PROMPT_STYLES)}, got {self.style!r}")
        if self.paper_variant not in PAPER_PROMPT_VARIANTS:
            raise ValueError(
                f"chat.paper_variant must be one of {list(PAPER_PROMPT_VARIANTS)}, got {self.paper_variant!r}"
            )
