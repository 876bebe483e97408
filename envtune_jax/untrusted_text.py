"""Text that came from model output, made safe to echo back and to tokenize.

Two rules, applied wherever the project writes such text into a message or turns a message into tokens:
- Echoes are bounded. A name, argument or error message that quotes the model's output is cut in the
  middle to at most `ECHO_LIMIT` characters (a name or value inside a sentence) or `MESSAGE_LIMIT`
  characters (a whole error string, hint or format-error message), with a marker saying how much was
  cut. A 10 MB tool name thus costs the conversation a few hundred characters, not 10 MB per echo.
- Lone surrogates become U+FFFD. JSON may spell code points U+D800..U+DFFF with `\\udXXX` escapes, and
  Python keeps them in `str`; they have no UTF-8 encoding, so a tokenizer cannot take them. Text is
  tokenized with each one replaced by the replacement character U+FFFD, which is also what decoding
  produces for bytes that are not UTF-8: the two directions treat invalid text alike. The messages
  themselves keep the text as written (the official harness echoes it the same way).
"""

from __future__ import annotations

import re

ECHO_LIMIT = 200
MESSAGE_LIMIT = 2000
REPLACEMENT_CHARACTER = "\ufffd"

_SURROGATE = re.compile("[\ud800-\udfff]")


def clip_middle(text: str, limit: int) -> str:
    """`text` if it has at most `limit` characters, else its start and end around a marker saying how
    many characters were cut; the result has at most `limit` characters (limit >= 40)."""
    if limit < 40:
        raise ValueError(f"clip_middle needs a limit of at least 40 characters, got {limit}")
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    while True:  # the marker takes room of its own: settle how many characters it replaces
        marker = f"…[{cut} characters cut]…"
        kept = limit - len(marker)
        if len(text) - kept == cut:
            break
        cut = len(text) - kept
    head = kept - kept // 3
    return text[:head] + marker + text[len(text) - (kept - head) :]


def echo(text: str) -> str:
    """A name or value of the model's, bounded for quoting inside a sentence."""
    return clip_middle(text, ECHO_LIMIT)


def bounded_message(text: str) -> str:
    """A whole message the environment composed around the model's output, bounded."""
    return clip_middle(text, MESSAGE_LIMIT)


def has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def replace_surrogates(text: str) -> str:
    """`text` with every surrogate code point (U+D800..U+DFFF) replaced by U+FFFD."""
    return _SURROGATE.sub(REPLACEMENT_CHARACTER, text)
