"""Ctrl-C that acts at once: the `envtune` program ends within about a second of SIGINT.

Python raises KeyboardInterrupt only once the main thread is back in Python bytecode, and an XLA
compilation or a device call can keep it in C++ for many seconds; after the exception, the interpreter's
own teardown (JAX clearing its caches, the garbage collection of every compiled program and traced
function) can take many seconds more and may end in a segmentation fault (docs/measurements.md). So:

- `exit_now(code)` flushes stdout, stderr and logging and ends the process without that teardown;
- `install()` starts a watchdog thread that wakes on the signal itself (`signal.set_wakeup_fd`: the C-level
  handler writes to a socket whatever the main thread is doing). If the process is still alive `GRACE_S`
  after a Ctrl-C, the watchdog ends it. (This also covers a KeyboardInterrupt that Python raised inside a
  garbage-collection callback, where it is swallowed: JAX's `_xla_gc_callback` does that; such a swallowed
  interrupt is not printed as an "Exception ignored" traceback);
- `hold_while(busy, what)` names work that must not be cut short (an asynchronous checkpoint being
  written): the watchdog waits while `busy()` is true and says so; a second Ctrl-C ends the process at once.

Nothing else needs unwinding: what envtune writes survives a kill at any point (folders renamed into place,
line-flushed logs, run checkpoints that count only once finalised), so ending here loses at most the step in
progress, and the same command resumes.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Callable

GRACE_S = 1.0  # after a Ctrl-C, how long the main thread has to end the process itself
POLL_S = 0.2  # how often the watchdog asks held work whether it is done

_exit_lock = threading.Lock()
_holds: dict[int, tuple[Callable[[], bool], str]] = {}
_installed = False


def install() -> bool:
    """Starts the watchdog (main thread only, once). Returns False where SIGINT is ignored or handled by
    someone else (a background job of a non-interactive shell ignores it: then so does the watchdog)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return _installed
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    sys.unraisablehook = _quiet_interrupts(sys.unraisablehook)
    threading.Thread(target=_watch, args=(reader, writer), name="envtune-interrupt", daemon=True).start()
    _installed = True
    return True


def hold_while(busy: Callable[[], bool], what: str) -> Callable[[], None]:
    """After a Ctrl-C the watchdog waits while `busy()` is true ("waiting for {what}"); returns a function
    that removes the hold."""
    key = id(busy)
    _holds[key] = (busy, what)
    return lambda: _holds.pop(key, None)


def exit_now(code: int, message: str | None = None) -> None:
    """Flushes output and ends the process with `code`, skipping the interpreter's teardown. In a multi-process
    JAX run that ended normally, this process first leaves the distributed runtime as JAX's own exit would."""
    with _exit_lock:  # a second caller (main thread and watchdog together) waits here until the first has ended it
        if message:
            _print(message)
        jax = sys.modules.get("jax")
        if code == 0 and jax is not None and jax.distributed.is_initialized():
            jax.distributed.shutdown()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (`envtune ... | head`)
                pass
        os._exit(code)


def _quiet_interrupts(hook):
    def unraisable(info) -> None:
        if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
            return  # swallowed where it was raised; the watchdog ends the process
        hook(info)

    return unraisable


def _print(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _busy() -> list[str]:
    busy = []
    for is_busy, what in list(_holds.values()):
        try:
            if is_busy():
                busy.append(what)
        except Exception:  # noqa: BLE001 - a hold that cannot answer holds nothing
            pass
    return busy


def _watch(reader: socket.socket, writer: socket.socket) -> None:
    """The watchdog: counts Ctrl-Cs from the wakeup socket; ends the process GRACE_S after the first (once no
    held work is busy), or at the second. `writer` is kept referenced so that its descriptor stays open."""
    interrupts, deadline, announced = 0, None, False
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([reader], [], [], timeout)
        if ready:
            interrupts += reader.recv(64).count(int(signal.SIGINT))
            if interrupts >= 2:
                exit_now(130, "\ninterrupted (second Ctrl-C: not waiting)")
            if interrupts == 1 and deadline is None:
                deadline = time.monotonic() + GRACE_S
            continue
        if deadline is None:
            continue
        busy = _busy()
        if busy:
            if not announced:
                _print(
                    f"\ninterrupted: waiting for {' and '.join(busy)} to finish "
                    "(Ctrl-C again to stop now; the run then resumes from the checkpoint before)"
                )
                announced = True
            deadline = time.monotonic() + POLL_S
            continue
        exit_now(130, "\ninterrupted")
