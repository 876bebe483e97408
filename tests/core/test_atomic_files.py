"""Publishing a folder and replacing a file leave a complete version at the path whenever the process is
killed (SIGKILL in a subprocess, at the worst moment of the old two-rename sequence or mid-write)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from envtune_jax.atomic_files import publish_dir, recover_dir, write_text_atomic
from envtune_jax.models.hf_io import staged_dir

ROOT = Path(__file__).resolve().parents[2]

# Replaces `out` through staged_dir and is killed right after the old folder leaves the path, if it ever does
# (the two-rename sequence); "no-exchange" plays a file system without an atomic swap.
PUBLISH = """
import os, signal, sys
from pathlib import Path
from envtune_jax.models.hf_io import staged_dir
out, mode = Path(sys.argv[1]).absolute(), sys.argv[2]
if mode == "no-exchange":
    import envtune_jax.atomic_files
    envtune_jax.atomic_files._RENAMEAT2 = None
real_rename = Path.rename
def rename(self, target):
    result = real_rename(self, target)
    if Path(self) == out:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
Path.rename = rename
with staged_dir(out, all_processes=False) as tmp:
    (tmp / "weights").write_text("new")
"""

# Replaces a file with write_text_atomic (or, with "plain", Path.write_text) and is killed in the middle of
# writing the new content.
WRITE = """
import builtins, io, os, signal, sys
from pathlib import Path
real_open = io.open
class Dying:
    def __init__(self, handle): self._handle = handle
    def write(self, data):
        self._handle.write(data[: len(data) // 2]); self._handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, name): return getattr(self._handle, name)
    def __enter__(self): return self
    def __exit__(self, *exc): return self._handle.__exit__(*exc)
def dying_open(file, mode="r", *args, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    return Dying(handle) if "w" in mode else handle
builtins.open = io.open = dying_open
from envtune_jax.atomic_files import write_text_atomic
write_text_atomic(sys.argv[1], "new content " * 100)
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=120)


def _old_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "weights").write_text("old")
    return path


def test_a_kill_while_a_folder_is_replaced_leaves_a_complete_folder_at_its_path(tmp_path):
    out = _old_folder(tmp_path / "export")
    result = _run(PUBLISH, str(out), "exchange")
    assert result.returncode == 0, result.stderr  # one atomic swap: the old folder never leaves the path alone
    assert (out / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_without_an_atomic_swap_the_next_write_puts_the_previous_folder_back(tmp_path):
    out = _old_folder(tmp_path / "export")
    result = _run(PUBLISH, str(out), "no-exchange")
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not out.exists() and (tmp_path / ".export.replaced" / "weights").read_text() == "old"
    assert recover_dir(out) and (out / "weights").read_text() == "old"
    _run(PUBLISH, str(out), "no-exchange")  # killed again at the same point ...
    try:
        with staged_dir(out, all_processes=False):  # ... the next write starts by putting it back
            assert (out / "weights").read_text() == "old"
            raise RuntimeError("this write fails")
    except RuntimeError:
        pass
    assert (out / "weights").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_publish_dir_replaces_a_folder_and_leaves_nothing_else(tmp_path):
    out = _old_folder(tmp_path / "final")
    ready = tmp_path / ".final.partial"
    ready.mkdir()
    (ready / "weights").write_text("new")
    publish_dir(ready, out)
    assert (out / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_a_kill_mid_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "progress"
    path.write_text("old content\n")
    result = _run(WRITE, str(path))
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert path.read_text() == "old content\n"
    write_text_atomic(path, "new content\n")
    assert path.read_text() == "new content\n"
