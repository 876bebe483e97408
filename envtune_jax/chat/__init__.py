"""The chat protocol: Qwen3 tokenizer, prompt rendering (qwen_fc / paper), tool-call parsing, and the
token-level conversation builder. This package is the only place that knows Qwen's text format."""

from envtune_jax.chat.bfcl_prompt import (
    bfcl_history_assistant_message,
    bfcl_holdout_turn_message,
    bfcl_tool_docs_for_prompt,
    bfcl_turn_messages,
)
from envtune_jax.chat.chat_config import ChatConfig, PaperPromptVariant, PromptStyle
from envtune_jax.chat.conversation import ConversationError, Segment, TokenConversation
from envtune_jax.chat.messages import MessageError, validate_messages
from envtune_jax.chat.parse import ParseResult, ToolCall, parse_tool_calls
from envtune_jax.chat.render import (
    render_assistant_body,
    render_environment_segment,
    render_messages,
    render_tool_call,
)
from envtune_jax.chat.tokenizer import (
    TokenizerLoadError,
    default_tokenizer,
    encode_text,
    load_tokenizer,
    save_tokenizer,
)

__all__ = [
    "ChatConfig",
    "ConversationError",
    "MessageError",
    "PaperPromptVariant",
    "ParseResult",
    "PromptStyle",
    "Segment",
    "TokenConversation",
    "TokenizerLoadError",
    "ToolCall",
    "bfcl_history_assistant_message",
    "bfcl_holdout_turn_message",
    "bfcl_tool_docs_for_prompt",
    "bfcl_turn_messages",
    "default_tokenizer",
    "encode_text",
    "load_tokenizer",
    "parse_tool_calls",
    "render_assistant_body",
    "render_environment_segment",
    "render_messages",
    "render_tool_call",
    "save_tokenizer",
    "validate_messages",
]
