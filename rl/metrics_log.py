"""Per-step metrics: one JSON line per step (metrics.jsonl) and TensorBoard event files.

Only process 0 writes, so multi-host runs produce one log. A resumed run passes the step it restored
(`resume_step`): the lines of later steps, written by the run that was interrupted before it could save
them, are dropped (the log is rewritten atomically), and TensorBoard is told to discard that run's
events from the next step on (a SessionLog.START "purge" event), so each step appears once in both.
Every step's line and events are flushed before `write` returns: a process killed after a step loses
nothing of it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.summary import scalar

from envtune_jax.atomic_files import write_text_atomic


def _plain(value: Any) -> Any:
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        value = np.asarray(value).item() if np.asarray(value).size == 1 else np.asarray(value).tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _lines_up_to(path: Path, step: int) -> list[str]:
    """The complete lines of `path` whose step is at most `step` (a line cut short by a kill is dropped)."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    return kept


class _EventsFile:
    """A TensorBoard event file written synchronously (tensorboardX's SummaryWriter queues events to a
    thread that flushes every flush_secs, so a killed process lost its last steps)."""

    def __init__(self, directory: Path, purge_step: int | None):
        directory.mkdir(parents=True, exist_ok=True)
        # (the writer names files by host and second; the suffix keeps a quick restart from truncating one)
        self._writer = EventsWriter(str(directory / "events"), filename_suffix=f".{os.getpid()}.{time.time_ns()}")
        if purge_step is not None:  # TensorBoard drops the earlier events of steps >= purge_step
            self._writer.write_event(
                Event(step=purge_step, wall_time=time.time(), session_log=SessionLog(status=SessionLog.START))
            )
        self._writer.flush()

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        values = [scalar(name, value).value[0] for name, value in scalars.items()]
        self._writer.write_event(Event(step=step, wall_time=time.time(), summary=Summary(value=values)))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsWriter:
    def __init__(self, directory: str | Path, tensorboard: bool = True, resume_step: int | None = None):
        self.directory = Path(directory)
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / "metrics.jsonl"
            if resume_step is not None and path.is_file():
                kept = _lines_up_to(path, resume_step)
                write_text_atomic(path, "".join(line + "\n" for line in kept))
            self._jsonl = open(path, "a", encoding="utf-8")
            if tensorboard:
                purge = resume_step + 1 if resume_step is not None else None
                self._tb = _EventsFile(self.directory / "tensorboard", purge)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        if self.enabled:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
            os.fsync(self._jsonl.fileno())
            if self._tb is not None:
                self._tb.write(
                    int(step),
                    {
                        key: float(value)
                        for key, value in record.items()
                        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"
                    },
                )
        return record

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
