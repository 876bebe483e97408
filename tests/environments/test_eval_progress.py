"""An evaluation's progress file survives a kill at any point: resuming after a line cut short, and being
killed again while doing so, keeps every finished record (it is only ever appended to)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from envtune_jax.environments.base import EpisodeOutcome
from envtune_jax.environments.eval_report import PROGRESS_FILE, EvalProgress, EvalProgressMismatchError, _record_line
from envtune_jax.environments.evaluation import EpisodeRecord

ROOT = Path(__file__).resolve().parents[2]
RUN = {"source": "policy:oracle", "split": "test", "categories": ["multi_turn_base"], "limit": None}
RECORDS = 346

# Opens the progress of RUN in argv[1] and is SIGKILLed in the middle of the first write of more than 2 kB
# (what a rewrite of the whole file is); appending a line or a newline goes through.
RESUME_THEN_DIE = """
import builtins, io, json, os, signal, sys
real_open = io.open
class Dying:
    def __init__(self, handle): self._handle = handle
    def write(self, data):
        if len(data) > 2000:
            self._handle.write(data[: len(data) // 2]); self._handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return self._handle.write(data)
    def __getattr__(self, name): return getattr(self._handle, name)
    def __enter__(self): return self
    def __exit__(self, *exc): return self._handle.__exit__(*exc)
def dying_open(*args, **kwargs): return Dying(real_open(*args, **kwargs))
builtins.open = io.open = dying_open
from envtune_jax.environments.eval_report import EvalProgress
progress = EvalProgress(sys.argv[1], json.loads(sys.argv[2]))
print(len(progress.done), flush=True)
"""


def _record(i: int) -> EpisodeRecord:
    outcome = EpisodeOutcome(f"multi_turn_base_{i}", [1.0, 0.0], 0.5, 2.0, 0.0, 0.0, False, {"calls": 3})
    return EpisodeRecord(outcome.entry_id, "multi_turn_base", outcome, [["step one", "step two"], ["done"]])


def test_a_kill_while_resuming_after_a_cut_line_keeps_every_record(tmp_path):
    progress = EvalProgress(tmp_path, RUN)
    for i in range(RECORDS):
        progress.add(_record(i))
    with (tmp_path / PROGRESS_FILE).open("a") as handle:
        handle.write('{"id": "multi_turn_base_999", "categ')  # the kill that interrupted the evaluation
    result = subprocess.run(
        [sys.executable, "-c", RESUME_THEN_DIE, str(tmp_path), json.dumps(RUN)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (0, -signal.SIGKILL), result.stderr
    resumed = EvalProgress(tmp_path, RUN)
    assert len(resumed.done) == RECORDS
    assert resumed.done["multi_turn_base_7"] == _record(7)
    resumed.add(_record(999))  # starts on its own line after the cut one
    assert len(EvalProgress(tmp_path, RUN).done) == RECORDS + 1


def test_a_first_line_cut_short_starts_the_run_over(tmp_path):
    (tmp_path / PROGRESS_FILE).write_text('{"run": {"source": "polic')
    progress = EvalProgress(tmp_path, RUN)
    assert progress.done == {}
    assert json.loads((tmp_path / PROGRESS_FILE).read_text().splitlines()[0]) == {"run": RUN}


def test_records_are_on_disk_when_add_returns(tmp_path):
    progress = EvalProgress(tmp_path, RUN)
    progress.add(_record(1))
    line = (tmp_path / PROGRESS_FILE).read_text().splitlines()[1]
    assert json.loads(line)["outcome"] == dataclasses.asdict(_record(1).outcome)


def test_a_file_whose_first_line_names_no_evaluation_is_said_so(tmp_path):
    lines = [json.dumps(_record_line(_record(i))) for i in range(2)]
    (tmp_path / PROGRESS_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalProgressMismatchError, match="its first line names no evaluation"):
        EvalProgress(tmp_path, RUN)
