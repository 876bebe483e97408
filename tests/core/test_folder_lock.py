"""One envtune process per run directory or evaluation folder: a second one gets one line and exit 2 (before
any model loads), a lock left by a killed process is taken over, a lock from another host is not broken."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import envtune_jax.folder_lock as folder_lock
from envtune_jax.cli.main import main
from envtune_jax.folder_lock import LOCK_FILE, FolderInUse, FolderLock, hold_folder

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "recipes" / "tiny_cpu.yaml"
HOLD = (
    "import sys, time\nfrom envtune_jax.folder_lock import FolderLock\n"
    "FolderLock(sys.argv[1], 'folder').acquire()\nprint('locked', flush=True)\ntime.sleep(300)\n"
)
EVAL = [
    "eval",
    "--policy",
    "do-nothing",
    "--split",
    "test",
    "--categories",
    "base",
    "--limit",
    "1",
    "--data-source",
    "package",
]


def _hold(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_second_eval_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "eval"
    holder = _hold(out)
    try:
        assert main(EVAL + ["--out", str(out)]) == 2
        line = _one_line(capsys.readouterr().err)
        assert "evaluation output folder is in use by another envtune process" in line and f"pid {holder.pid}" in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # no progress file to block the folder later
    finally:
        holder.kill()  # SIGKILL: the lock file stays, its flock goes with the process
        holder.wait()
    assert (out / LOCK_FILE).is_file()
    assert main(EVAL + ["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"took over the lock left by a process that is no longer running (pid {holder.pid}" in err
    assert (out / "eval_results.json").is_file() and not (out / LOCK_FILE).exists()


def test_an_evaluation_finished_in_out_after_the_argument_check_is_not_overwritten(tmp_path, capsys, monkeypatch):
    from envtune_jax.cli import eval as eval_cli

    out, checked = tmp_path / "eval", eval_cli.validate

    def check_then_another_finishes(args):  # another evaluation ends in --out between the check and the lock
        checked(args)
        out.mkdir()
        (out / "eval_results.json").write_text("{}")

    monkeypatch.setattr(eval_cli, "validate", check_then_another_finishes)
    assert main(EVAL + ["--out", str(out)]) == 2
    assert "holds a finished evaluation" in _one_line(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["eval_results.json"]
    assert (out / "eval_results.json").read_text() == "{}"


def test_a_second_train_on_a_run_dir_is_refused_before_anything_loads(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = _hold(run_dir)
    try:
        assert (
            main(
                [
                    "train",
                    "--config",
                    str(RECIPE),
                    f"run_dir={run_dir}",
                    "stages=[../stages/stage1_syntax.yaml]",
                    "logging.progress_bar=false",
                    "logging.tensorboard=false",
                ]
            )
            == 2
        )
        line = _one_line(capsys.readouterr().err)
        assert "run directory is in use by another envtune process" in line and f"pid {holder.pid}" in line
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()


def _write_record(folder: Path, **record) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(
        json.dumps({"since": "2026-12-01T10:00:00+00:00", "command": "envtune train", **record}) + "\n"
    )


def test_a_lock_from_another_host_is_not_broken(tmp_path):
    _write_record(tmp_path, pid=1234, host="node-17")
    with pytest.raises(FolderInUse, match=rf"locked by pid 1234 on node-17.*delete {tmp_path / LOCK_FILE}"):
        FolderLock(tmp_path, "run directory").acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "node-17"


def test_without_flock_the_record_decides_by_pid(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(folder_lock.fcntl, "flock", no_flock)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        _write_record(tmp_path, pid=sleeper.pid, host=socket.gethostname())
        with pytest.raises(FolderInUse, match=f"pid {sleeper.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = FolderLock(tmp_path)
    assert f"pid {sleeper.pid}" in lock.acquire()  # its holder is gone: taken over
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_folder_made_only_for_the_lock_is_removed_again(tmp_path):
    with hold_folder(tmp_path / "new") as lock:
        assert lock.held and (tmp_path / "new" / LOCK_FILE).is_file()
    assert not (tmp_path / "new").exists()
    with hold_folder(tmp_path / "written"):
        (tmp_path / "written" / "results.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "written").iterdir()) == ["results.json"]


def test_in_a_multi_process_run_process_0_holds_the_lock_and_all_stop_together(tmp_path, monkeypatch):
    import jax
    from jax.experimental import multihost_utils

    monkeypatch.setattr(folder_lock, "_is_multiprocess", lambda: True)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    broadcast = []
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda value: broadcast.append(int(value)) or 1)
    with hold_folder(tmp_path / "run") as lock:  # process 1: takes nothing, learns that process 0 got it
        assert lock is None and not (tmp_path / "run").exists()
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda value: broadcast.append(int(value)) or 0)
    with pytest.raises(FolderInUse, match="process 0 could not lock it"):
        with hold_folder(tmp_path / "run"):
            pass
    assert broadcast == [1, 1]  # (only process 0's value counts in a broadcast)
