"""The evaluation table (the seed model card's layout) and the files an evaluation run writes.

Table rows: one per BFCL category (correct / total / accuracy), then OVERALL, whose accuracy is the
unweighted mean of the category accuracies (the leaderboard's multi-turn overall) and whose correct /
total columns are sums. Files: `eval_results.json` (table, per-entry verdicts and rewards, run metadata),
`eval_results.md` (the table), and `model_results.jsonl` (per entry the raw step texts in the official
result layout, {"id", "result": [[step text, ...] per turn]}, re-scorable with `--replay` or officially;
an entry the official harness would have stopped with an error has "Error during inference: ..." instead).
While a run goes on, `EvalProgress` appends each finished entry's record to `eval_records.partial` in the
same folder, so that the same run started again with that folder skips what was done (the file is removed
once the results are written).
Replay input (official result files, or the folder this module writes) is read by environments/replay_files.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from envtune_jax.atomic_files import write_text_atomic
from envtune_jax.environments.base import EpisodeOutcome
from envtune_jax.environments.bfcl_data import CATEGORIES
from envtune_jax.environments.evaluation import EpisodeRecord
from envtune_jax.environments.replay_files import ReplayFileError, load_recorded_outputs  # noqa: F401 - replay input, re-exported


@dataclasses.dataclass(frozen=True)
class TableRow:
    category: str
    correct: int
    total: int
    accuracy: float  # percent


def category_table(records: Sequence[EpisodeRecord], categories: Iterable[str] = CATEGORIES) -> list[TableRow]:
    """Rows for the categories present in `records` (in CATEGORIES order), then OVERALL."""
    rows = []
    for category in categories:
        in_category = [r for r in records if r.category == category]
        if not in_category:
            continue
        correct = sum(r.outcome.correct for r in in_category)
        rows.append(TableRow(category, correct, len(in_category), 100.0 * correct / len(in_category)))
    if not rows:
        raise ValueError("no records of the requested categories to tabulate")
    overall_accuracy = sum(row.accuracy for row in rows) / len(rows)
    rows.append(TableRow("OVERALL", sum(r.correct for r in rows), sum(r.total for r in rows), overall_accuracy))
    return rows


def markdown_table(rows: Sequence[TableRow]) -> str:
    lines = ["| Category | Correct | Total | Accuracy |", "|---|---:|---:|---:|"]
    lines += [f"| {row.category} | {row.correct} | {row.total} | {row.accuracy:.2f}% |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(
    out_dir: str | Path, rows: Sequence[TableRow], records: Sequence[EpisodeRecord], metadata: dict[str, Any]
) -> dict[str, Path]:
    """Writes model_results.jsonl, eval_results.md and eval_results.json (last) into out_dir, each replaced
    whole (atomically); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "eval_results.json",
        "markdown": out / "eval_results.md",
        "layout": out / "model_results.jsonl",
    }
    payload = {
        **metadata,
        "table": [dataclasses.asdict(row) for row in rows],
        "overall_accuracy": rows[-1].accuracy,
        "entries": [record.to_json() for record in records],
    }
    layout_lines = (
        json.dumps({"id": record.episode_id, "result": record.official_result()}) + "\n" for record in records
    )
    write_text_atomic(paths["layout"], "".join(layout_lines))
    write_text_atomic(paths["markdown"], markdown_table(rows))
    write_text_atomic(paths["json"], json.dumps(payload, indent=1) + "\n")
    return paths


PROGRESS_FILE = "eval_records.partial"  # not *.json / *.jsonl: a replay of the folder does not read it


class EvalProgressMismatchError(ValueError):
    """The output folder holds the progress of a different evaluation run."""


class EvalProgress:
    """The records of the entries a run has finished, one JSON line each in `out_dir/eval_records.partial`
    after a first line naming the run (`run`: source, split, categories, ...).

    Opening a folder whose file names the same run loads its records (`done`: entry id -> record), so the
    caller evaluates only the others; a different run raises EvalProgressMismatchError. The file is only
    ever appended to after its first line (written whole, atomically), so a kill at any point loses at
    most the line being written: such a line is skipped when read (that entry is evaluated again) and
    ended with a newline so the next record starts on its own line. `add` appends one record (in the
    file when it returns: a killed process loses none); `close` removes the file (call it once the results
    are written).
    """

    def __init__(self, out_dir: str | Path, run: dict[str, Any]):
        self.path = Path(out_dir) / PROGRESS_FILE
        self.run = json.loads(json.dumps(run))  # as it reads back
        self.done: dict[str, EpisodeRecord] = {}
        text = self.path.read_text(encoding="utf-8", errors="replace") if self.path.exists() else ""
        lines = text.splitlines()
        if lines and _header(lines[0]) is None and len(lines) == 1:
            lines = []  # a first line cut short by a kill: nothing was recorded yet
        if lines:
            self._load(lines)
            if not text.endswith("\n"):  # the last line was cut short by a kill
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write("\n")
        else:  # a new run (or a kill before its first line was complete)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps({"run": self.run}) + "\n")

    def _load(self, lines: list[str]) -> None:
        header = _header(lines[0])
        if header is None:
            raise EvalProgressMismatchError(
                f"{self.path} is not an evaluation's progress (its first line names no "
                "evaluation): choose another --out, or delete the file to start over"
            )
        if header.get("run") != self.run:
            raise EvalProgressMismatchError(
                f"{self.path} holds the progress of another evaluation ({header.get('run')}), not of this one "
                f"({self.run}): choose another --out, or delete the file to start over"
            )
        for line in lines[1:]:
            try:
                item = json.loads(line)
                record = EpisodeRecord(
                    item["id"],
                    item["category"],
                    EpisodeOutcome(**item["outcome"]),
                    item["steps"],
                    item.get("inference_error", ""),
                )
            except (json.JSONDecodeError, KeyError, TypeError):  # a line cut short by a kill
                continue
            self.done[record.episode_id] = record

    def add(self, record: EpisodeRecord) -> None:
        self.done[record.episode_id] = record
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(_record_line(record)) + "\n")

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def _header(line: str) -> dict[str, Any] | None:
    try:
        header = json.loads(line)
    except json.JSONDecodeError:
        return None
    return header if isinstance(header, dict) and "run" in header else None


def _record_line(record: EpisodeRecord) -> dict[str, Any]:
    return {
        "id": record.episode_id,
        "category": record.category,
        "outcome": dataclasses.asdict(record.outcome),
        "steps": record.steps,
        "inference_error": record.inference_error,
    }
