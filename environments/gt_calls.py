"""Ground-truth calls: Python-syntax strings (`cd(folder='temp')`, `sort('a.pdf')`) parsed safely.

Parsed with `ast` and `ast.literal_eval` only (never eval). Positional arguments are kept for execution
(the official checker evaluates the string, so `f('x')` binds positionally) and also mapped to their
parameter names through the method signature, giving a JSON-ready `ToolCall` for the oracle policy.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
from typing import Any

from envtune_jax.environments.base import ToolCall
from envtune_jax.environments.executor import method_signature, public_method_names


class GroundTruthSyntaxError(ValueError):
    """A ground-truth call string is not a plain call with literal arguments."""


@dataclasses.dataclass(frozen=True)
class GroundTruthCall:
    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]
    source: str

    def as_tool_call(self, class_name: str) -> ToolCall:
        """All arguments by name (positional ones mapped through the method signature)."""
        bound = method_signature(class_name, self.name).bind(*self.args, **dict(self.kwargs))
        return ToolCall(self.name, copy.deepcopy(dict(bound.arguments)))


@functools.lru_cache(maxsize=8192)
def parse_ground_truth_call(source: str) -> GroundTruthCall:
    """`name(arg, key=value, ...)` with literal arguments; anything else raises GroundTruthSyntaxError."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except SyntaxError as exc:
        raise GroundTruthSyntaxError(f"not a Python call: {source!r}") from exc
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise GroundTruthSyntaxError(f"not a plain function call: {source!r}")
    try:
        args = tuple(ast.literal_eval(arg) for arg in node.args)
        kwargs = tuple((kw.arg, ast.literal_eval(kw.value)) for kw in node.keywords)
    except ValueError as exc:
        raise GroundTruthSyntaxError(f"non-literal argument in {source!r}") from exc
    if any(key is None for key, _ in kwargs):
        raise GroundTruthSyntaxError(f"**-expansion not allowed in {source!r}")
    return GroundTruthCall(node.func.id, args, kwargs, source)


def owner_class(name: str, involved_classes: list[str]) -> str:
    for class_name in involved_classes:
        if name in public_method_names(class_name):
            return class_name
    raise GroundTruthSyntaxError(f"{name!r} is not a method of {involved_classes}")


def ground_truth_tool_calls(turn_calls: list[str], involved_classes: list[str]) -> list[ToolCall]:
    """One turn's ground truth as named-argument ToolCalls (what a perfect agent would emit)."""
    calls = []
    for source in turn_calls:
        parsed = parse_ground_truth_call(source)
        calls.append(parsed.as_tool_call(owner_class(parsed.name, involved_classes)))
    return calls
