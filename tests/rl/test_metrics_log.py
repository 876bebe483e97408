"""The metrics log has one line per step across resumes, and a step's TensorBoard events are on disk as
soon as it is logged (a SIGKILL right after loses nothing)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

from tensorboardX.proto.event_pb2 import Event

from envtune_jax.rl.metrics_log import MetricsWriter

ROOT = Path(__file__).resolve().parents[2]
WRITE_THEN_DIE = """
import os, signal, sys
from envtune_jax.rl.metrics_log import MetricsWriter
writer = MetricsWriter(sys.argv[1], tensorboard=True)
writer.write(1, {"loss": 0.25, "reward_mean": 0.5})
writer.write(2, {"loss": 0.125, "reward_mean": 0.75})
os.kill(os.getpid(), signal.SIGKILL)
"""


def _events(folder: Path) -> list[Event]:
    """Every event in the TFRecord files of `folder` (length, crc, payload, crc)."""
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            payload = data[offset + 12 : offset + 12 + length]
            if len(payload) < length:
                break
            events.append(Event.FromString(payload))
            offset += 12 + length + 4
    return events


def _scalars(events: list[Event]) -> dict[tuple[int, str], float]:
    return {(event.step, value.tag): value.simple_value for event in events for value in event.summary.value}


def test_a_step_logged_before_a_sigkill_is_in_the_event_file(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", WRITE_THEN_DIE, str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert _scalars(_events(tmp_path / "tensorboard")) == {
        (1, "loss"): 0.25,
        (1, "reward_mean"): 0.5,
        (2, "loss"): 0.125,
        (2, "reward_mean"): 0.75,
    }
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_resume_drops_the_steps_after_its_checkpoint_and_purges_them_in_tensorboard(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=True)
    for step in (1, 2, 3):
        writer.write(step, {"loss": float(step)})
    writer.close()
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 4, "lo')  # cut by the kill
    writer = MetricsWriter(tmp_path, tensorboard=True, resume_step=2)  # the checkpoint it restored: step 2
    writer.write(3, {"loss": 30.0})
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(line["step"], line["loss"]) for line in lines] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    purges = [event.step for event in _events(tmp_path / "tensorboard") if event.HasField("session_log")]
    assert purges == [3]  # TensorBoard discards the earlier events of steps >= 3


def test_a_fresh_start_drops_the_lines_of_an_attempt_that_saved_no_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    writer = MetricsWriter(tmp_path, tensorboard=False, resume_step=0)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'
