"""JSON from model output, decoded with a fixed nesting limit, and the nesting depth of decoded values.

Python's JSON decoder and encoder, `copy.deepcopy`, `pickle` and `repr` all recurse for each nesting
level (pickle and deepcopy use two of the interpreter's 1000 recursion levels per level: measured on
CPython 3.11, a nested list pickles up to 497 levels deep from the top of the stack), so a body nested a
few hundred levels deep decodes in one place and raises `RecursionError` in another, or not, depending on
how deep the caller's stack happens to be. Bodies nested deeper than `MAX_JSON_DEPTH` levels are
therefore refused before decoding, whatever the stack: `loads_bounded` raises `JsonTooDeepError` (a
`ValueError`, like any other decode failure), and every value that gets past it can be copied, pickled
to a tool process and re-encoded from any stack under about 480 frames.

The official BFCL decoder has no limit of its own (its `json.loads` gives out near 1000 levels minus the
caller's stack). `MAX_JSON_DEPTH` lies above 202, the body depth at which an argument reaches the
depth that the official executor's `eval` refuses ("too many nested parentheses"), so every call the
official executor could still run decodes here; bodies nested between 257 and about 990 levels are a
call whose execution fails for the official harness and an undecodable block here.

The depth of a text is measured without recursion and in linear time: escape sequences are cut out, then
string literals, then the brackets that remain are counted; the depth of a decoded value is measured
with an explicit stack.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

MAX_JSON_DEPTH = 256  # arrays and objects inside one another, counting the outermost

_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING_LITERAL = re.compile(r'"[^"]*"')
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class JsonTooDeepError(ValueError):
    """A JSON text nests arrays and objects deeper than the limit."""


def json_text_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest (0 for a scalar), read without recursion.

    Brackets inside string literals do not count. For a text that is not valid JSON the figure is the
    deepest run of unclosed brackets, which is all a caller deciding whether to decode it needs."""
    # Three linear passes (no backtracking on any input): escapes out, then string literals, then the rest.
    brackets = _NOT_A_BRACKET.sub("", _STRING_LITERAL.sub("", _ESCAPE.sub("", text)))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def loads_bounded(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads(text)`, refusing texts nested deeper than `max_depth` with JsonTooDeepError."""
    depth = json_text_depth(text)
    if depth > max_depth:
        raise JsonTooDeepError(f"JSON nested {depth} levels deep (at most {max_depth} are accepted)")
    return json.loads(text)


def value_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (lists and dicts; a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest
