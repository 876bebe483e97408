"""An episode as one growing token sequence, with no re-tokenisation drift.

The prompt is rendered and tokenised once; sampled assistant tokens are appended exactly as sampled
(loss mask 1, including their closing <|im_end|>); environment messages (tool results, hints, the next
user turn) are rendered as the segment that follows an assistant message and appended (loss mask 0).
For outputs that tokenise canonically the result equals tokenising the fully rendered conversation;
for any other output the sampled ids stay as they were, which keeps policy-gradient ratios exact.
A sampled step that ends without <|im_end|> (length cut, <|endoftext|>) is closed by an <|im_end|>
that the environment segment supplies with loss mask 0, and its segment is marked `unterminated`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Collection, Literal, Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer

from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.chat.messages import Message
from envtune_jax.chat.parse import ParseResult, parse_tool_calls
from envtune_jax.chat.render import render_environment_segment, render_messages
from envtune_jax.chat.special_tokens import IM_END
from envtune_jax.chat.tokenizer import encode_text, special_token_id

SegmentKind = Literal["prompt", "assistant", "environment"]


class ConversationError(RuntimeError):
    """The conversation was driven out of order or given bad tokens; the message says how."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """Tokens [start, end) of one piece of the episode; `turn` and `step` count from 0."""

    kind: SegmentKind
    start: int
    end: int
    turn: int
    step: int
    unterminated: bool = False  # assistant segments only: no <|im_end|> was sampled


class TokenConversation:
    """start(messages, tools) → (append_sampled(ids) → append_environment(messages))* → append_sampled(ids)."""

    def __init__(self, tokenizer: Tokenizer, config: ChatConfig = ChatConfig(), vocab_size: int | None = None):
        """`vocab_size`: ids accepted from the sampler; the model's vocabulary may exceed the tokenizer's
        (Qwen3: 151,936 rows for 151,669 tokens). Ids without text decode to nothing."""
        self.tokenizer = tokenizer
        self.config = config
        self.vocab_size = vocab_size or tokenizer.get_vocab_size(with_added_tokens=True)
        self.im_end_id = special_token_id(tokenizer, IM_END)
        self._ids: list[int] = []
        self._mask: list[int] = []
        self._segments: list[Segment] = []
        self._turn = 0
        self._step = 0

    # -- building ---------------------------------------------------------------------------------
    def _append(self, ids: Sequence[int], mask_value: int, kind: SegmentKind, unterminated: bool = False) -> Segment:
        start = len(self._ids)
        self._ids.extend(int(token) for token in ids)
        self._mask.extend([mask_value] * len(ids))
        segment = Segment(kind, start, len(self._ids), self._turn, self._step, unterminated)
        self._segments.append(segment)
        return segment

    def start(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] = ()) -> Segment:
        """Tokenises the rendered prompt (system + tools + first turn + generation prompt)."""
        if self._segments:
            raise ConversationError("start() was already called on this conversation")
        text = render_messages(messages, tools, self.config.style, True, self.config.paper_variant)
        return self._append(encode_text(self.tokenizer, text), 0, "prompt")

    def append_sampled(self, token_ids: Sequence[int]) -> Segment:
        """Appends one sampled assistant step, ids kept as given (they should end with <|im_end|>)."""
        if not self._segments or self._segments[-1].kind == "assistant":
            raise ConversationError("append_sampled() must follow start() or append_environment()")
        ids = [int(token) for token in token_ids]
        if not ids:
            raise ConversationError("append_sampled() got no tokens")
        if self.im_end_id in ids[:-1]:
            position = ids.index(self.im_end_id)
            raise ConversationError(f"<|im_end|> at position {position} of {len(ids)}: cut the sample after it")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise ConversationError(f"sampled ids must lie in [0, {self.vocab_size}), got {min(ids)}..{max(ids)}")
        return self._append(ids, 1, "assistant", unterminated=ids[-1] != self.im_end_id)

    def append_environment(self, messages: Sequence[Message]) -> Segment:
        """Appends tool results / hints / the next user turn and the next generation prompt (mask 0).
        A user message in `messages` starts a new turn; otherwise the next step of the same turn."""
        if not self._segments or self._segments[-1].kind != "assistant":
            raise ConversationError("append_environment() must follow append_sampled()")
        text = render_environment_segment(messages, self.config.style)
        if self._segments[-1].unterminated:
            text = IM_END + text
        if any(message["role"] == "user" for message in messages):
            self._turn, self._step = self._turn + 1, 0
        else:
            self._step += 1
        return self._append(encode_text(self.tokenizer, text), 0, "environment")

    # -- reading ----------------------------------------------------------------------------------
    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    @property
    def loss_mask(self) -> list[int]:
        return list(self._mask)

    @property
    def boundaries(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    @property
    def turn(self) -> int:
        return self._turn

    @property
    def step(self) -> int:
        return self._step

    def __len__(self) -> int:
        return len(self._ids)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids_t int32 [T], loss_mask_t int32 [T])."""
        return np.asarray(self._ids, dtype=np.int32), np.asarray(self._mask, dtype=np.int32)

    def text(self) -> str:
        """The whole episode decoded (special tokens kept), for logs and debugging."""
        return self.tokenizer.decode(self._ids, skip_special_tokens=False)

    def sampled_text(self, segment: Segment) -> str:
        """The decoded text of one assistant segment without its <|im_end|> (what the parser reads)."""
        ids = self._ids[segment.start : segment.end]
        if ids and ids[-1] == self.im_end_id:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def parse_last_step(
        self, offered_tool_names: Collection[str] | None, known_tool_names: Collection[str] | None = None
    ) -> ParseResult:
        """Parses the latest assistant segment with this conversation's style (calls by the official rule)."""
        if not self._segments or self._segments[-1].kind != "assistant":
            raise ConversationError("parse_last_step() needs an assistant segment at the end")
        return parse_tool_calls(
            self.sampled_text(self._segments[-1]), offered_tool_names, self.config.style, known_tool_names
        )
