"""The chat protocol's configuration: which prompt style, and which paper system prompt."""
from __future__ import annotations

import dataclasses
from typing import Literal

# "qwen_fc": Qwen3's native function-calling format, byte-identical to the official BFCL Qwen FC handler.
# "paper":   the Environment Tuning format: <think> reasoning, then <tool_call> blocks or one <answer>.
PromptStyle = Literal["qwen_fc", "paper"]
PROMPT_STYLES: tuple[str, ...] = ("qwen_fc", "paper")

# Stages 1-2 and stages 3-4 of the curriculum use different system prompts in the paper style.
PaperPromptVariant = Literal["stage12", "stage34"]
PAPER_PROMPT_VARIANTS: tuple[str, ...] = ("stage12", "stage34")


@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """How conversations are rendered and parsed (`chat:` section of a YAML config)."""

    style: PromptStyle = "qwen_fc"
    paper_variant: PaperPromptVariant = "stage12"  # used only when style == "paper"

    def __post_init__(self) -> None:
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"chat.style must be one of {list(PROMPT_STYLES)}, got {self.style!r}")
        if self.paper_variant not in PAPER_PROMPT_VARIANTS:
            raise ValueError(
                f"chat.paper_variant must be one of {list(PAPER_PROMPT_VARIANTS)}, got {self.paper_variant!r}")
