"""The evaluation table (the seed model card's layout) and the files an evaluation run writes.

Table rows: one per BFCL category (correct / total / accuracy), then OVERALL, whose accuracy is the
unweighted mean of the category accuracies (the leaderboard's multi-turn overall) and whose correct /
total columns are sums. Files: `eval_results.json` (table, per-entry verdicts and rewards, run metadata),
`eval_results.md` (the table), and `model_results.jsonl` (per entry the raw step texts in the official
result layout, {"id", "result": [[step text, ...] per turn]}, re-scorable with `--replay` or officially).
Replay input: official result files (JSON lines, or a JSON list) or a folder of them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from environments.bfcl_data import CATEGORIES
from environments.evaluation import EpisodeRecord


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


def write_results(out_dir: str | Path, rows: Sequence[TableRow], records: Sequence[EpisodeRecord],
                  metadata: dict[str, Any]) -> dict[str, Path]:
    """Writes eval_results.json, eval_results.md and model_results.jsonl into out_dir; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval_results.json", "markdown": out / "eval_results.md", "layout": out / "model_results.jsonl"}
    payload = {
        **metadata,
        "table": [dataclasses.asdict(row) for row in rows],
        "overall_accuracy": rows[-1].accuracy,
        "entries": [record.to_json() for record in records],
    }
    paths["json"].write_text(json.dumps(payload, indent=1) + "\n")
    paths["markdown"].write_text(markdown_table(rows))
    with paths["layout"].open("w") as handle:
        for record in records:
            handle.write(json.dumps({"id": record.episode_id, "result": record.steps}) + "\n")
    return paths


class ReplayFileError(ValueError):
    """A replay file is not in the official result layout."""


def _records_in_file(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    stripped = text.lstrip()
    if stripped.startswith("["):
        items = json.loads(text)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    for item in items:
        if not isinstance(item, dict) or "id" not in item or "result" not in item:
            raise ReplayFileError(f"{path}: every record needs 'id' and 'result' (per turn, per step, the raw text)")
    return items


def load_recorded_outputs(paths: Iterable[str | Path]) -> dict[str, list[list[str]]]:
    """{entry id: per turn, per step, raw text} from official result files or folders of them.

    A 'result' that is not a list of lists (the official harness writes an error string when inference
    failed) is kept as an empty recording, which scores as force-terminated, as the official evaluation does.
    """
    recorded: dict[str, list[list[str]]] = {}
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
        if not files:
            raise ReplayFileError(f"no result files (*.json, *.jsonl) under {path}")
        for file in files:
            for item in _records_in_file(file):
                result = item["result"]
                valid = isinstance(result, list) and all(
                    isinstance(turn, list) and all(isinstance(step, str) for step in turn) for turn in result
                )
                recorded[item["id"]] = result if valid else []
    return recorded
