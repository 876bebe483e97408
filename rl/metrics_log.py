"""Per-step metrics: one JSON line per step (metrics.jsonl) and TensorBoard event files.

Only process 0 writes, so multi-host runs produce one log.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np


def _plain(value: Any) -> Any:
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        value = np.asarray(value).item() if np.asarray(value).size == 1 else np.asarray(value).tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    def __init__(self, directory: str | Path, tensorboard: bool = True):
        self.directory = Path(directory)
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.directory / "metrics.jsonl", "a", encoding="utf-8")
            if tensorboard:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(str(self.directory / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        if self.enabled:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
            if self._tb is not None:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                        self._tb.add_scalar(key, value, int(step))
        return record

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
