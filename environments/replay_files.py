"""Reading recorded model outputs to score (`envtune eval --replay`): official BFCL result files, the
folder `envtune eval` writes, or folders of result files.

A result file holds one record per JSON line (or one JSON list) in the official result layout,
`{"id": ..., "result": [[step text, ...] per turn]}`. Refused with a `ReplayFileError` naming file and
line: a line that is not JSON, a record without a string `id` and a `result`, a `result` that is neither
a list of turns of step texts nor an error text, and one id recorded twice with different results.
Accepted but reported (`Recordings`): a `result` that is an error text (the official harness writes one
when inference failed; it scores as force-terminated, as the official evaluation does) and an id
recorded twice with the same result. In a folder, every *.json / *.jsonl file is read except the
summary `envtune eval` writes beside its records (eval_results.json).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from envtune_jax.environments.bfcl_data import CATEGORIES, BfclEntry

EVAL_SUMMARY_FILE = "eval_results.json"  # environments/eval_report.py writes it; its records are in model_results.jsonl


class ReplayFileError(ValueError):
    """A replay file is not in the official result layout; the message names the file and line."""


@dataclasses.dataclass
class Recordings:
    """Recorded steps by entry id, where each came from, and what was accepted but is worth a word."""

    steps: dict[str, list[list[str]]] = dataclasses.field(default_factory=dict)  # id -> per turn, per step
    where: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> "file:line"
    failed_inference: list[str] = dataclasses.field(default_factory=list)  # ids whose result is an error text
    repeated: list[str] = dataclasses.field(default_factory=list)  # ids recorded again with the same result


def load_recordings(paths: Iterable[str | Path]) -> Recordings:
    recordings = Recordings()
    for path in map(Path, paths):
        if not path.exists():
            raise ReplayFileError(f"--replay {path}: not found")
        for file in _result_files(path):
            for where, item in _records_in_file(file):
                _add(recordings, item, where)
    return recordings


def load_recorded_outputs(paths: Iterable[str | Path]) -> dict[str, list[list[str]]]:
    """{entry id: per turn, per step, raw text}; an error-text result is an empty recording."""
    return load_recordings(paths).steps


def unscored_recordings(
    recordings: Recordings, entries: Sequence[BfclEntry], split: str, limit: int | None = None
) -> dict[str, list[str]]:
    """What is not scored as recorded, by reason -> entry ids: "missing" (evaluated entries without a
    recording), "failed_inference", "turn_count" (another number of turns than the entry: wrong, as the
    official checker scores it), "repeated", and recorded ids outside the evaluated entries, by why."""
    by_id = {entry.id: entry for entry in entries}
    chosen = {entry.category for entry in entries}
    found: dict[str, list[str]] = {
        "missing": [entry.id for entry in entries if entry.id not in recordings.steps],
        "failed_inference": [i for i in recordings.failed_inference if i in by_id],
        "turn_count": [
            i
            for i, steps in recordings.steps.items()
            if i in by_id and i not in recordings.failed_inference and len(steps) != by_id[i].num_turns
        ],
        "repeated": list(dict.fromkeys(recordings.repeated)),
    }
    outside = f"not among the evaluated entries (--split {split}{' with --limit' if limit else ''})"
    for entry_id in recordings.steps:
        if entry_id in by_id:
            continue
        category, _, number = entry_id.rpartition("_")
        if category not in CATEGORIES or not number.isdigit():
            reason = "not a BFCL V3 multi-turn entry id"
        elif category not in chosen:
            reason = "in a category not evaluated (--categories)"
        else:
            reason = outside
        found.setdefault(reason, []).append(entry_id)
    return {reason: ids for reason, ids in found.items() if ids}


def _result_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.suffix in (".json", ".jsonl")
        and p.is_file()
        and not (p.name == EVAL_SUMMARY_FILE and (p.parent / "model_results.jsonl").exists())
    )
    if not files:
        raise ReplayFileError(f"--replay {path}: no result files (*.json, *.jsonl) in this folder")
    return files


def _records_in_file(path: Path) -> Iterator[tuple[str, Any]]:
    """(file:line, parsed record) of each record of a result file."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ReplayFileError(f"{path}: not a text file") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReplayFileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        for index, item in enumerate(items):
            yield f"{path} record {index + 1}", item
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = (
                " (an `envtune eval` summary? pass its folder or model_results.jsonl)"
                if number == 1 and line.strip() == "{"
                else ""
            )
            raise ReplayFileError(f"{path}:{number}: not valid JSON ({exc.msg}){hint}") from None
        yield f"{path}:{number}", item


def _add(recordings: Recordings, item: Any, where: str) -> None:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or "result" not in item:
        raise ReplayFileError(
            f"{where}: a record needs a string 'id' and a 'result' (per turn, per step, the "
            "raw text), as the official result files hold"
        )
    entry_id, result = item["id"], item["result"]
    if isinstance(result, str):  # the official harness's text for a failed inference
        steps, failed = [], True
    elif isinstance(result, list) and all(
        isinstance(turn, list) and all(isinstance(step, str) for step in turn) for turn in result
    ):
        steps, failed = result, False
    else:
        raise ReplayFileError(
            f"{where}: 'result' of {entry_id} must be a list of turns, each a list of step "
            f"texts (or the error text of a failed inference), got {_shape(result)}"
        )
    if entry_id in recordings.steps:
        if recordings.steps[entry_id] != steps:
            raise ReplayFileError(
                f"{entry_id} is recorded twice with different results: {recordings.where[entry_id]} and {where}"
            )
        recordings.repeated.append(entry_id)
        return
    recordings.steps[entry_id] = steps
    recordings.where[entry_id] = where
    if failed:
        recordings.failed_inference.append(entry_id)


def _shape(value: Any, depth: int = 0) -> str:
    """A short description of a JSON value's nesting, e.g. 'a list of list of dict'."""
    if isinstance(value, list) and depth < 3:
        inner = " / ".join(sorted({_shape(item, depth + 1) for item in value}))
        text = f"list of {inner}" if value else "empty list"
    else:
        text = type(value).__name__
    return text if depth else f"a {text}"
