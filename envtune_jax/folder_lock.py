"""One envtune process at a time per run directory or evaluation output folder.

`FolderLock` holds `<folder>/.envtune.lock`: an exclusive `flock` on that file for as long as the
process lives, and in it a one-line JSON record of the holder (pid, host, start time, command line),
which the next process names when it is refused. The kernel drops a flock when its process ends,
however it ends (SIGKILL included), which is how a stale lock is told from a live one:

- flock held by another process: the folder is in use (FolderInUse).
- flock free and the record names this host: its holder is gone; the lock is taken over (said once).
- flock free and the record names another host: on a shared file system whose locks do not reach
  across hosts (NFS mounted with local locks, some FUSE file systems) this host cannot know whether
  that process still runs, so it refuses and says which file to delete once that run is over.
- a file system without flock (ENOLCK / ENOTSUP): the record alone decides, by pid on this host.

`hold_folder` is the multi-process form: process 0 alone takes the lock (the other processes of a
multi-host run share its run directory) and tells every process, in one broadcast, whether it got
it, so that all of them stop together. Child processes started with fork share the lock (fork copies
the descriptor); exec'd ones do not (close-on-exec).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

from envtune_jax.config import ConfigError

LOCK_FILE = ".envtune.lock"
_NO_FLOCK = {errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class FolderInUse(ConfigError):
    """The run directory or output folder chosen is held by another envtune process; names the holder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict) -> str:
    command = str(holder.get("command", ""))
    command = command if len(command) <= 120 else command[:117] + "..."
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}: {command}"


class FolderLock:
    """The lock of one folder (created if missing). `acquire` returns a note when it took over a stale
    lock (else None) or raises FolderInUse; `release` removes the lock file, and the folder when `acquire`
    created it and nothing else was written there."""

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._fd: int | None = None
        self._created = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> str | None:
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                note = self._claim(fd)
            except BaseException:
                os.close(fd)
                raise
            if note is _RETRY:
                os.close(fd)
                continue
            self._fd = fd
            return note

    def _claim(self, fd: int):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            kernel_lock = True
        except BlockingIOError:
            raise FolderInUse(
                f"{self.folder}: this {self.what} is in use by another envtune process "
                f"({_describe(_read_record(fd))}); wait for it to end or stop it"
            ) from None
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise
            kernel_lock = False
        try:
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                return _RETRY  # the holder released (and removed) the file while we opened it
        except FileNotFoundError:
            return _RETRY
        previous = _read_record(fd)
        host = socket.gethostname()
        if previous:
            if previous.get("host") != host:
                raise FolderInUse(
                    f"{self.folder}: this {self.what} is locked by {_describe(previous)}; this host ({host}) cannot "
                    f"tell whether that process still runs: if it does not, delete {self.path} and run again"
                )
            if not kernel_lock and previous.get("pid") != os.getpid() and _pid_alive(int(previous.get("pid", -1))):
                raise FolderInUse(
                    f"{self.folder}: this {self.what} is in use by another envtune process "
                    f"({_describe(previous)}); wait for it to end or stop it"
                )
        record = {
            "pid": os.getpid(),
            "host": host,
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        if previous:
            return (
                f"{self.folder}: took over the lock left by a process that is no longer running ({_describe(previous)})"
            )
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)  # drops the flock
            self._fd = None
        if self._created:  # a folder made only to hold the lock (the command wrote nothing) goes too
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_RETRY = object()


def _read_record(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        record = json.loads(text) if text else {}
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _is_multiprocess() -> bool:
    if "jax" not in sys.modules:
        return False
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


@contextlib.contextmanager
def hold_folder(
    folder: str | os.PathLike, what: str = "folder", log: Callable[[str], None] | None = None
) -> Iterator[FolderLock | None]:
    """Holds `folder`'s lock for the block: in a multi-process run, process 0 takes it and all processes
    raise FolderInUse together when it could not; yields the lock (None on processes other than 0)."""
    multiprocess = _is_multiprocess()
    leader = True
    if multiprocess:
        import jax

        leader = jax.process_index() == 0
    lock = FolderLock(folder, what) if leader else None
    error: FolderInUse | None = None
    note = None
    if lock is not None:
        try:
            note = lock.acquire()
        except FolderInUse as exc:
            error = exc
    if multiprocess:
        import numpy as np
        from jax.experimental import multihost_utils

        got = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not got and error is None:
            error = FolderInUse(f"{folder}: this {what} is in use (process 0 could not lock it)")
    if error is not None:
        raise error
    if note:
        (log or (lambda message: print(f"envtune: {message}", file=sys.stderr)))(note)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
