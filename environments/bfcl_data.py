"""BFCL V3 multi-turn data from the installed `bfcl-eval` package: entries, ground truth, tool docs.

Files are located with importlib.resources inside `bfcl_eval/data/` (the `BFCL_v4_multi_turn_*` files hold
the V3 multi-turn data). Tool docs get the same description suffix as the official loader adds; the docs
withheld in miss_func entries do not (the official loader removes them before adding the suffix).
Loading warns (does not fail) when the installed bfcl-eval is not the pinned version.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import warnings
from typing import Any, Iterable, Mapping

BFCL_DISTRIBUTION = "bfcl-eval"
BFCL_VERSION = "2026.3.23"
BFCL_PIN = f"{BFCL_DISTRIBUTION}=={BFCL_VERSION}"
INSTALL_COMMAND = f"pip install --no-deps {BFCL_PIN} mpmath==1.3.0"

CATEGORIES = (
    "multi_turn_base",
    "multi_turn_long_context",
    "multi_turn_miss_func",
    "multi_turn_miss_param",
)
SCENARIOS_PER_CATEGORY = 200
PYTHON_SYNTAX_NOTE = " Note that the provided function is in Python 3 syntax."

# API class -> tool-doc file in data/multi_turn_func_doc/ (the eight classes of the multi-turn categories).
FUNC_DOC_FILES = {
    "GorillaFileSystem": "gorilla_file_system.json",
    "MathAPI": "math_api.json",
    "MessageAPI": "message_api.json",
    "TwitterAPI": "posting_api.json",
    "TicketAPI": "ticket_api.json",
    "TradingBot": "trading_bot.json",
    "TravelAPI": "travel_booking.json",
    "VehicleControlAPI": "vehicle_control.json",
}


class BfclDataMissingError(RuntimeError):
    """The `bfcl-eval` package (data, API classes, checker) is not installed."""


class BfclVersionWarning(UserWarning):
    """The installed `bfcl-eval` is not the pinned version: data and checker may differ from it."""


@dataclasses.dataclass(frozen=True)
class BfclEntry:
    """One multi-turn test entry with its ground truth.

    `question[t]` is the list of messages that opens turn t (empty for a miss_func hold-out turn);
    `ground_truth[t]` the Python-syntax calls expected in turn t (empty: no call expected);
    `missed_function` maps a hold-out turn index to the tool names offered only from that turn on.
    """

    id: str
    category: str
    scenario_index: int
    question: list[list[dict[str, Any]]]
    initial_config: dict[str, Any]
    involved_classes: list[str]
    missed_function: dict[int, list[str]]
    ground_truth: list[list[str]]

    @property
    def num_turns(self) -> int:
        return len(self.ground_truth)

    @property
    def long_context(self) -> bool:
        """Backends are loaded with long_context=True, as the official harness does for this category."""
        return "long_context" in self.category or "composite" in self.category

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "BfclEntry":
        data = json.loads(text)
        data["missed_function"] = {int(k): list(v) for k, v in data["missed_function"].items()}
        return cls(**data)


def _package_data_dir():
    try:
        from importlib import resources

        import bfcl_eval  # noqa: F401  (empty package __init__; imports nothing heavy)
    except ModuleNotFoundError as exc:
        raise BfclDataMissingError(
            f"The BFCL multi-turn data and API classes come from the `{BFCL_PIN}` package, which is not "
            f"installed. Install it without its dependency tree:\n    {INSTALL_COMMAND}\n(or run `make setup`)."
        ) from exc
    check_bfcl_version()
    return resources.files("bfcl_eval") / "data"


def installed_bfcl_version() -> str | None:
    """The installed bfcl-eval distribution's version, or None when it has no package metadata."""
    try:
        return importlib.metadata.version(BFCL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_bfcl_version() -> str | None:
    """Warns (BfclVersionWarning; shown once per process under the default warning filters) unless the
    installed bfcl-eval is the pinned version, and returns the warning text (None when it matches)."""
    installed = installed_bfcl_version()
    if installed == BFCL_VERSION:
        return None
    found = f"version {installed}" if installed else "a version without package metadata"
    message = (
        f"bfcl-eval {found} is installed, but this project is pinned to {BFCL_VERSION}: entries, ground truth, "
        f"API classes and checker may differ, so scores may not match the pinned leaderboard data. Install the "
        f"pinned version with:\n    {INSTALL_COMMAND}"
    )
    warnings.warn(message, BfclVersionWarning, stacklevel=2)
    return message


def _read_jsonl(resource) -> list[dict[str, Any]]:
    return [json.loads(line) for line in resource.read_text(encoding="utf-8").splitlines() if line.strip()]


def category_of(entry_id: str) -> str:
    """`multi_turn_base_12` -> `multi_turn_base`."""
    return entry_id.rsplit("_", 1)[0]


def scenario_index_of(entry_id: str) -> int:
    """`multi_turn_base_12` -> 12: the scenario shared by the four categories."""
    return int(entry_id.rsplit("_", 1)[1])


def _check_categories(categories: Iterable[str]) -> tuple[str, ...]:
    categories = tuple(categories)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown BFCL categories {unknown}; choose from {list(CATEGORIES)}")
    return categories


@functools.lru_cache(maxsize=None)
def _load_category(category: str) -> tuple[BfclEntry, ...]:
    data_dir = _package_data_dir()
    short = category.removeprefix("multi_turn_")
    raw_entries = _read_jsonl(data_dir / f"BFCL_v4_multi_turn_{short}.json")
    answers = {
        a["id"]: a["ground_truth"]
        for a in _read_jsonl(data_dir / "possible_answer" / f"BFCL_v4_multi_turn_{short}.json")
    }
    entries = []
    for raw in raw_entries:
        entry_id = raw["id"]
        if entry_id not in answers:
            raise BfclDataMissingError(f"no ground truth for {entry_id} in the installed {BFCL_PIN} data")
        entries.append(
            BfclEntry(
                id=entry_id,
                category=category,
                scenario_index=scenario_index_of(entry_id),
                question=raw["question"],
                initial_config=raw.get("initial_config", {}),
                involved_classes=list(raw["involved_classes"]),
                missed_function={int(k): list(v) for k, v in raw.get("missed_function", {}).items()},
                ground_truth=answers[entry_id],
            )
        )
    return tuple(entries)


def load_entries(categories: Iterable[str] = CATEGORIES) -> list[BfclEntry]:
    """All entries of the given categories, in file order (scenario index order). Cached per process."""
    return [entry for category in _check_categories(categories) for entry in _load_category(category)]


@functools.lru_cache(maxsize=None)
def _entries_by_id() -> Mapping[str, BfclEntry]:
    return {entry.id: entry for entry in load_entries()}


def entry_by_id(entry_id: str) -> BfclEntry:
    try:
        return _entries_by_id()[entry_id]
    except KeyError:
        raise KeyError(f"no BFCL multi-turn entry with id {entry_id!r}") from None


@functools.lru_cache(maxsize=None)
def _raw_func_docs(class_name: str) -> tuple[str, ...]:
    if class_name not in FUNC_DOC_FILES:
        raise ValueError(f"unknown BFCL API class {class_name!r}; known: {sorted(FUNC_DOC_FILES)}")
    resource = _package_data_dir() / "multi_turn_func_doc" / FUNC_DOC_FILES[class_name]
    # Kept as JSON text so every caller gets fresh, unshared dicts.
    return tuple(json.dumps(doc) for doc in _read_jsonl(resource))


def func_docs(class_name: str) -> list[dict[str, Any]]:
    """The raw tool docs of one API class (no description suffix), in file order."""
    return [json.loads(text) for text in _raw_func_docs(class_name)]


def offered_tool_docs(entry: BfclEntry) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    """(docs offered from the start, with the Python-3 note; {hold-out turn: raw withheld docs}).

    Mirrors the official loader: docs of every involved class in order, withheld ones removed (in the
    order `missed_function` names them) and kept without the suffix for the hold-out turn's message.
    Returns fresh objects; `shared_offered_tool_docs` returns cached ones that must not be modified.
    """
    offered_json, withheld_json = _offered_tool_docs_json(*_docs_key(entry))
    return json.loads(offered_json), {turn: json.loads(text) for turn, text in withheld_json}


def shared_offered_tool_docs(entry: BfclEntry) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    """Like offered_tool_docs, but cached and shared between callers: treat as read-only."""
    return _shared_offered_tool_docs(*_docs_key(entry))


def _docs_key(entry: BfclEntry) -> tuple[tuple[str, ...], tuple[tuple[int, tuple[str, ...]], ...]]:
    return tuple(entry.involved_classes), tuple((t, tuple(n)) for t, n in sorted(entry.missed_function.items()))


@functools.lru_cache(maxsize=None)
def _shared_offered_tool_docs(involved_classes, missed_function):
    offered_json, withheld_json = _offered_tool_docs_json(involved_classes, missed_function)
    return json.loads(offered_json), {turn: json.loads(text) for turn, text in withheld_json}


@functools.lru_cache(maxsize=None)
def _offered_tool_docs_json(involved_classes, missed_function) -> tuple[str, tuple[tuple[int, str], ...]]:
    offered = [doc for class_name in involved_classes for doc in func_docs(class_name)]
    withheld: list[tuple[int, str]] = []
    for turn_index, names in missed_function:
        held_out = []
        for name in names:
            position = next((i for i, doc in enumerate(offered) if doc["name"] == name), None)
            if position is not None:
                held_out.append(offered.pop(position))
        withheld.append((turn_index, json.dumps(held_out)))
    for doc in offered:
        doc["description"] = doc["description"] + PYTHON_SYNTAX_NOTE
    return json.dumps(offered), tuple(withheld)
