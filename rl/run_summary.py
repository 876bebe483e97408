"""What a training run did and where it wrote it: the table `envtune train` prints at the end.

Reads the run's `logs/metrics.jsonl` (one JSON line per optimizer step, `stage` = the stage's index) and
the run folder. A step logged more than once (a run resumed from an earlier checkpoint logs the steps after
it again) counts once, with its last line; a line cut short by a kill is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

METRICS_FILE = Path("logs") / "metrics.jsonl"


def load_step_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The per-step records of a run folder (or of a metrics.jsonl file), one per step, in step order."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def _number(record: dict, key: str) -> float | None:
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _mean_first_last(records: Sequence[dict], key: str) -> str:
    values = [v for v in (_number(r, key) for r in records) if v is not None]
    if not values:
        return "-"
    return f"{sum(values) / len(values):.3f} ({values[0]:.3f} → {values[-1]:.3f})"


def stage_table(records: Sequence[dict], stage_names: Sequence[str]) -> str:
    """One row per stage: steps, reward and accuracy (mean over the stage's steps, first → last step),
    the last validation accuracy."""
    header = ("stage", "steps", "reward mean (first → last)", "accuracy mean (first → last)", "validation accuracy")
    rows = []
    for index, name in enumerate(stage_names):
        mine = [r for r in records if r.get("stage") == index]
        validations = [v for v in (_number(r, "val/accuracy") for r in mine) if v is not None]
        rows.append(
            (
                name,
                str(len(mine)),
                _mean_first_last(mine, "reward_mean"),
                _mean_first_last(mine, "accuracy"),
                f"{validations[-1]:.3f}" if validations else "-",
            )
        )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)]
    return "\n".join(lines)


def written_files(run_dir: Path, stage_names: Sequence[str]) -> list[tuple[str, str]]:
    """(path, what it is) for each output of the run that exists."""
    run = Path(run_dir)
    found = []

    def add(path: Path, what: str) -> None:
        if path.exists():
            found.append((str(path), what))

    add(run / "config.yaml", "the resolved recipe (stages/: each stage's settings)")
    add(run / METRICS_FILE, f"one line per step; `envtune plot {run}` draws the curves to a PNG")
    add(run / "logs" / "tensorboard", f"TensorBoard events: tensorboard --logdir {run / 'logs' / 'tensorboard'}")
    checkpoints = run / "checkpoints"
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []
    if steps:
        found.append((str(checkpoints), f"resumable run state (latest: step {steps[-1]}); the same command resumes"))
    for name in stage_names:
        add(run / "export" / name, f"HF safetensors at the end of {name}")
    add(
        run / "final", f"envtune checkpoint: envtune eval --ckpt {run / 'final'}, envtune export --ckpt {run / 'final'}"
    )
    return found


def run_summary(run_dir: str | Path, stage_names: Sequence[str]) -> str:
    """The end-of-training summary: the stage table, then where everything was written."""
    run = Path(run_dir)
    records = load_step_metrics(run) if (run / METRICS_FILE).is_file() else []
    files = written_files(run, stage_names)
    width = max((len(path) for path, _ in files), default=0)
    lines = [
        f"training finished: {len(records)} steps over {len(stage_names)} stages",
        "",
        stage_table(records, stage_names),
        "",
        f"written in {run}:",
    ]
    lines += [f"  {path.ljust(width)}  {what}" for path, what in files]
    return "\n".join(lines)
