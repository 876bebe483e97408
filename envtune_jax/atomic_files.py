"""Writing files and publishing folders so that a process killed at any instant leaves either the old
complete version or the new complete one, never a mix and never nothing.

`write_text_atomic` writes a sibling temporary file, flushes it to disk and renames it over the target
(a rename within one folder is atomic on POSIX file systems). `publish_dir` puts a finished folder at a
path: when a folder is already there the two are swapped in one step (Linux `renameat2` with
RENAME_EXCHANGE), so the path always names a complete folder; where the file system cannot swap (it
answers EINVAL/ENOSYS/ENOTSUP, e.g. some network file systems) it falls back to two renames and
records nothing in between — `recover_dir` (called before every publish) puts the previous folder back
if a kill fell between them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV}


def fsync_dir(path: str | os.PathLike) -> None:
    """Makes a rename or a new entry in folder `path` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replaces `path` with `text` (UTF-8): readers and a kill at any point see the old or the new content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _libc_renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _libc_renameat2()


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swaps two existing paths in one atomic step; False where the OS or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _replaced_name(path: Path) -> Path:
    return path.parent / f".{path.name}.replaced"


def recover_dir(path: str | os.PathLike) -> bool:
    """Puts back the previous folder a kill between `publish_dir`'s fallback renames left aside;
    True if it did."""
    path = Path(path)
    replaced = _replaced_name(path)
    if replaced.is_dir() and not path.exists():
        replaced.rename(path)
        return True
    return False


def publish_dir(ready: str | os.PathLike, path: str | os.PathLike) -> None:
    """Moves the complete folder `ready` to `path`, replacing (and then deleting) what was there; at every
    instant `path` names either the previous folder or the new one (see the module docstring for file
    systems without an atomic swap). `ready` must be a sibling of `path`."""
    ready, path = Path(ready), Path(path)
    recover_dir(path)
    if not path.exists() and not path.is_symlink():
        ready.rename(path)
    elif path.is_dir() and not path.is_symlink() and exchange_paths(ready, path):
        shutil.rmtree(ready)  # now the previous folder
    else:
        replaced = _replaced_name(path)
        _remove(replaced)
        path.rename(replaced)
        ready.rename(path)
        _remove(replaced)
    fsync_dir(path.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
