"""Qwen3's added tokens: their text, their ids (151643..151668, in order) and which ones are "special".

The order and the `special` flags are those of Qwen3's `tokenizer_config.json` (`added_tokens_decoder`).
Tokens flagged special=False (`<tool_call>`, `<think>`, ...) are still matched as single tokens in any
input text; the flag only decides whether `decode(..., skip_special_tokens=True)` drops them.
"""

from __future__ import annotations

from typing import NamedTuple

FIRST_ADDED_TOKEN_ID = 151643  # = number of byte-level BPE tokens in qwen.tiktoken


class AddedTokenSpec(NamedTuple):
    token_id: int
    content: str
    special: bool


_CONTENTS_AND_FLAGS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

QWEN3_ADDED_TOKENS: tuple[AddedTokenSpec, ...] = tuple(
    AddedTokenSpec(FIRST_ADDED_TOKEN_ID + offset, content, special)
    for offset, (content, special) in enumerate(_CONTENTS_AND_FLAGS)
)
ADDED_TOKEN_IDS: dict[str, int] = {spec.content: spec.token_id for spec in QWEN3_ADDED_TOKENS}

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

ENDOFTEXT_ID = ADDED_TOKEN_IDS[ENDOFTEXT]  # 151643, also the pad token
IM_START_ID = ADDED_TOKEN_IDS[IM_START]  # 151644
IM_END_ID = ADDED_TOKEN_IDS[IM_END]  # 151645, ends every chat message (the chat eos token)
TOOL_CALL_OPEN_ID = ADDED_TOKEN_IDS[TOOL_CALL_OPEN]  # 151657
TOOL_CALL_CLOSE_ID = ADDED_TOKEN_IDS[TOOL_CALL_CLOSE]  # 151658
TOOL_RESPONSE_OPEN_ID = ADDED_TOKEN_IDS[TOOL_RESPONSE_OPEN]  # 151665
TOOL_RESPONSE_CLOSE_ID = ADDED_TOKEN_IDS[TOOL_RESPONSE_CLOSE]  # 151666
THINK_OPEN_ID = ADDED_TOKEN_IDS[THINK_OPEN]  # 151667
THINK_CLOSE_ID = ADDED_TOKEN_IDS[THINK_CLOSE]  # 151668

# Tokens that end a sampled assistant message (Qwen3's generation_config eos_token_id list).
STOP_TOKEN_IDS: tuple[int, ...] = (IM_END_ID, ENDOFTEXT_ID)

assert QWEN3_ADDED_TOKENS[-1].token_id == 151668, "Qwen3 added tokens must end at id 151668"
