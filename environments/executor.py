"""Safe execution of tool calls on per-episode instances of the official BFCL API classes.

No `eval`, no module globals: a tool name is looked up in the set of names offered in the current turn,
mapped to a bound public method of this episode's instance, and called with the JSON arguments. The
result string is formatted exactly as the official executor formats it (`str` as is, `dict` through
`json.dumps` with a `str` fallback, anything else `str()`, exceptions as "Error during execution: ...").
As in the official executor, formatting is part of the call: a result that cannot be formatted (an
integer over Python's 4,300-digit limit) becomes an error string like any exception. Arguments nested
200 levels or more get the error the official executor's `eval` gives them (Python's parser refuses them)
without running. Error strings that quote the model's output are bounded (`envtune_jax.untrusted_text`).
Every call runs inside the executor's `guard`, which may refuse it (`CallRefused`): the tool process
uses it to time calls and to refuse, on replay, a call that ran past its limit (`envtune_jax.environments.tool_host`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib
import inspect
import json
import math
from typing import Any, Callable, ContextManager, Iterable, Mapping

from envtune_jax.untrusted_json import value_depth
from envtune_jax.untrusted_text import bounded_message, echo

BACKEND_PACKAGE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
API_CLASS_MODULES = {
    "GorillaFileSystem": "gorilla_file_system",
    "MathAPI": "math_api",
    "MessageAPI": "message_api",
    "TwitterAPI": "posting_api",
    "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot",
    "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control",
}
STATELESS_CLASSES = frozenset({"MathAPI"})
EXECUTION_ERROR_PREFIX = "Error during execution: "
# The official executor writes the call as Python source and evals it; CPython's parser refuses brackets
# nested this deep (the call's own parenthesis takes one level).
PYTHON_NESTING_LIMIT = 200
_DOC_TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}


def api_module_names() -> list[str]:
    """The modules of the eight API classes (what a tool process imports before its first call)."""
    return [f"{BACKEND_PACKAGE}.{module}" for module in API_CLASS_MODULES.values()]


@functools.lru_cache(maxsize=None)
def api_class(class_name: str) -> type:
    if class_name not in API_CLASS_MODULES:
        raise ValueError(f"unknown BFCL API class {class_name!r}; known: {sorted(API_CLASS_MODULES)}")
    module = importlib.import_module(f"{BACKEND_PACKAGE}.{API_CLASS_MODULES[class_name]}")
    return getattr(module, class_name)


def create_instances(
    involved_classes: Iterable[str], initial_config: Mapping[str, Any], long_context: bool
) -> dict[str, Any]:
    """Fresh API instances loaded from the entry's initial_config, as the official harness loads them."""
    instances = {}
    for class_name in involved_classes:
        instance = api_class(class_name)()
        if class_name not in STATELESS_CLASSES:
            instance._load_scenario(copy.deepcopy(initial_config.get(class_name, {})), long_context=long_context)
        instances[class_name] = instance
    return instances


@functools.lru_cache(maxsize=None)
def public_method_names(class_name: str) -> frozenset[str]:
    cls = api_class(class_name)
    return frozenset(n for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_"))


@functools.lru_cache(maxsize=None)
def method_signature(class_name: str, method_name: str) -> inspect.Signature:
    """Signature of the method without `self`."""
    signature = inspect.signature(getattr(api_class(class_name), method_name))
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def format_result(value: Any) -> str:
    """The official executor's result string (exact `type()` checks, as it does). May raise (a `str()` of
    an integer over 4,300 digits): the official executor formats inside its error handling, so does ours."""
    if type(value) == str:  # noqa: E721
        return value
    if type(value) == dict:  # noqa: E721
        try:
            return json.dumps(value)
        except Exception:
            return str(value)
    return str(value)


def error_result(message: str) -> str:
    """An "Error during execution: ..." string, bounded."""
    return bounded_message(EXECUTION_ERROR_PREFIX + message)


def exception_text(exc: BaseException) -> str:
    """`str(exc)`, or the exception's type name when even that raises (an argument over the digit limit)."""
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


@functools.cache
def python_nesting_error() -> str:
    """The message of the SyntaxError that the official executor's eval raises for too deep arguments."""
    source = "f(" + "[" * PYTHON_NESTING_LIMIT + "]" * PYTHON_NESTING_LIMIT + ")"
    try:
        compile(source, "<string>", "eval")
    except SyntaxError as exc:
        return str(exc)
    return "too many nested parentheses (<string>, line 1)"  # CPython 3.11-3.13's words, if this one parses it


def too_deep_for_python(arguments: Mapping[str, Any]) -> bool:
    """Whether the official executor's Python source for these arguments nests past the parser's limit."""
    return any(value_depth(value) >= PYTHON_NESTING_LIMIT for value in arguments.values())


def _first_non_finite(value: Any) -> float | None:
    """The official executor writes arguments with repr() and evals them: inf/nan then fail by name."""
    if isinstance(value, float) and not math.isfinite(value):
        return value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        found = _first_non_finite(child)
        if found is not None:
            return found
    return None


@dataclasses.dataclass(frozen=True)
class ExecutedCall:
    """One executed call: the official result string and how it went."""

    name: str
    arguments: dict[str, Any]
    result: str
    valid: bool  # offered name, arguments bind to the signature with the documented JSON types
    raised: bool  # not executed, or raised: result is an "Error during execution: ..." string
    reported_error: bool  # executed and returned a dict with an "error" key


class CallRefused(Exception):
    """Raised by a guard instead of running a call; its message becomes the call's error string."""


CallGuard = Callable[[str], ContextManager[None]]


def no_guard(name: str) -> ContextManager[None]:
    """Runs every call, untimed."""
    return contextlib.nullcontext()


class SafeExecutor:
    """Executes calls by name on a fixed set of instances, restricted to the currently offered names.

    `guard(name)` wraps each call (method and result formatting) and may refuse it with CallRefused."""

    def __init__(
        self, instances: Mapping[str, Any], tool_docs: Iterable[Mapping[str, Any]], guard: CallGuard = no_guard
    ):
        self.instances = dict(instances)
        self.guard = guard
        self.owner_of = {name: cls for cls in self.instances for name in public_method_names(cls)}
        self._param_types: dict[str, dict[str, str]] = {}
        self.offered: set[str] = set()
        self.offered_docs: dict[str, Mapping[str, Any]] = {}
        self.callable_unoffered: set[str] = set()
        self.offer(tool_docs)

    def offer(self, tool_docs: Iterable[Mapping[str, Any]]) -> None:
        """Makes these tools callable (a miss_func hold-out turn offers its withheld tools this way)."""
        for doc in tool_docs:
            name = doc["name"]
            if name not in self.owner_of:
                raise ValueError(f"tool doc {name!r} has no method in {sorted(self.instances)}")
            self.offered.add(name)
            self.offered_docs[name] = doc
            properties = doc.get("parameters", {}).get("properties", {})
            self._param_types[name] = {p: spec.get("type", "any") for p, spec in properties.items()}

    def allow_unoffered(self, names: Iterable[str]) -> None:
        """Makes tools callable without offering them (the official executor resolves every public
        method of the involved classes, including tools withheld until a later miss_func turn)."""
        for name in names:
            if name not in self.owner_of:
                raise ValueError(f"{name!r} is not a method of {sorted(self.instances)}")
            self.callable_unoffered.add(name)

    def arguments_valid(self, name: str, arguments: Mapping[str, Any]) -> bool:
        """Known offered name, arguments bind to the method, and documented top-level JSON types match."""
        if name not in self.offered or not isinstance(arguments, Mapping):
            return False
        try:
            method_signature(self.owner_of[name], name).bind(**arguments)
        except TypeError:
            return False
        types = self._param_types.get(name, {})
        for key, value in arguments.items():
            check = _DOC_TYPE_CHECKS.get(types.get(key, "any"))
            if check is not None and not check(value):
                return False
        return True

    def execute(self, name: str, arguments: Mapping[str, Any]) -> ExecutedCall:
        kept = dict(arguments) if isinstance(arguments, Mapping) else {}
        if too_deep_for_python(kept):  # the official executor's eval fails to parse before anything else
            return ExecutedCall(str(name), kept, error_result(python_nesting_error()), False, True, False)
        if not isinstance(name, str) or not (name in self.offered or name in self.callable_unoffered):
            return ExecutedCall(
                str(name), kept, error_result(f"name '{echo(str(name))}' is not defined"), False, True, False
            )
        if not isinstance(arguments, Mapping):
            return ExecutedCall(
                name, {}, error_result(f"arguments of {name} must be a JSON object"), False, True, False
            )
        valid = self.arguments_valid(name, kept)
        non_finite = _first_non_finite(kept)
        if non_finite is not None:
            return ExecutedCall(
                name, kept, error_result(f"name '{abs(non_finite)!r}' is not defined"), False, True, False
            )
        method = getattr(self.instances[self.owner_of[name]], name)
        try:
            with self.guard(name):
                value = method(**copy.deepcopy(kept))
                reported_error = type(value) == dict and "error" in value  # noqa: E721
                result = format_result(value)
        except Exception as exc:  # the official executor turns every exception into a result string
            return ExecutedCall(name, kept, error_result(exception_text(exc)), valid, True, False)
        return ExecutedCall(name, kept, result, valid, False, reported_error)

    def execute_positional(self, name: str, args: tuple, kwargs: Mapping[str, Any]) -> str:
        """Runs a trusted ground-truth call (positional arguments allowed), offered or not."""
        method = getattr(self.instances[self.owner_of[name]], name)
        try:
            with self.guard(name):
                return format_result(method(*copy.deepcopy(args), **copy.deepcopy(dict(kwargs))))
        except Exception as exc:
            return error_result(exception_text(exc))
