"""How the official BFCL multi-turn harness turns an entry into chat messages and tools (Qwen FC mode).

Facts reproduced here (bfcl_eval 2026.3.23, `utils.load_dataset_entry` and `BaseHandler`):
- Tools are the raw docs of the involved classes, in `involved_classes` order and file order, minus the
  miss_func hold-out docs; each description gets " Note that the provided function is in Python 3 syntax."
  (added only to the offered docs: the held-out docs keep their original descriptions).
- A hold-out turn (an empty question turn) becomes one user message: the Python `str()` of the list of
  held-out docs, a newline, then "I have updated some more functions you can choose from. What about now?".
  The system prompt's tools do not change.
- After a step, the history keeps the assistant message `QwenFCHandler._parse_query_response_prompting`
  builds from the raw output: {"content": "", "tool_calls": [...]} when any <tool_call> block of the
  whole output (reasoning included) parses as JSON, the parsed values as they are (a string "arguments"
  stays a string, extra keys stay, non-calls stay), else {"content": <text after </think>>}; always with
  "reasoning_content". Each execution result follows as {"role": "tool", "content": result}.
  `history_renders_officially` says whether the official formatter can render such a message: when it
  cannot, the harness fails at its next query, and the entry is an inference error.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Mapping, Sequence

from envtune_jax.chat.official_decode import extract_json_blocks, split_reasoning

PYTHON_SYNTAX_NOTE = " Note that the provided function is in Python 3 syntax."
HOLDOUT_TURN_SENTENCE = "I have updated some more functions you can choose from. What about now?"


def bfcl_tool_docs_for_prompt(docs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the offered BFCL docs with the Python-syntax note appended to each description."""
    prepared = []
    for doc in docs:
        doc_copy = copy.deepcopy(dict(doc))
        doc_copy["description"] = doc_copy["description"] + PYTHON_SYNTAX_NOTE
        prepared.append(doc_copy)
    return prepared


def bfcl_holdout_turn_message(held_out_docs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The user message that replaces an empty miss_func turn (raw docs, Python repr, then the sentence)."""
    return {"role": "user", "content": f"{[dict(doc) for doc in held_out_docs]}\n{HOLDOUT_TURN_SENTENCE}"}


def bfcl_turn_messages(
    question_turn: Sequence[Mapping[str, Any]], held_out_docs: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The messages that open a turn: the entry's own turn, or the hold-out message for an empty turn."""
    if question_turn:
        return [dict(message) for message in question_turn]
    if held_out_docs is None:
        raise ValueError("an empty question turn is a miss_func hold-out turn: pass the held-out docs")
    return [bfcl_holdout_turn_message(held_out_docs)]


def bfcl_history_assistant_message(output: str) -> dict[str, Any]:
    """The assistant message the official harness appends to the history after a step whose whole
    generated text (reasoning included) is `output`."""
    reasoning, visible = split_reasoning(output)
    blocks = extract_json_blocks(output)
    if blocks:
        message: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": blocks}
    else:
        message = {"role": "assistant", "content": visible}
    message["reasoning_content"] = reasoning
    return message


def history_renders_officially(message: Mapping[str, Any]) -> bool:
    """Whether `QwenFCHandler._format_prompt` renders this history message without raising: every tool call
    is an object (or one wrapped under "function") with a string "name" and an "arguments" key whose
    value JSON can write (a string is written as it is)."""
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            return False
        if "function" in call:
            call = call["function"]
            if not isinstance(call, dict):
                return False
        if not isinstance(call.get("name"), str) or "arguments" not in call:
            return False
        if not isinstance(call["arguments"], str):
            try:
                json.dumps(call["arguments"])
            except (TypeError, ValueError, RecursionError):
                return False
    return True
