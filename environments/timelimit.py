"""A per-call wall-clock limit for tool execution, built on SIGALRM (`signal.setitimer`).

Works in the main thread of any process, which includes the workers of a ProcessPoolExecutor (tasks run
in the worker's main thread). Limitations, by design of POSIX signals in CPython:
- In a non-main thread (or on a platform without SIGALRM) the limit is not enforced: the call just runs.
- The signal is handled between bytecodes, so a single long C-level operation (e.g. a huge integer
  power) finishes before the limit fires. For hard isolation run episodes in worker processes.
An outer SIGALRM timer (e.g. pytest-timeout) is preserved: its handler and its remaining time are
restored after the call.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Iterator


class CallTimeLimitExceeded(BaseException):
    """Raised inside a tool call that ran past its limit.

    A BaseException (like KeyboardInterrupt) so that `except Exception` blocks inside the API classes
    cannot swallow it.
    """


def limit_is_enforceable() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _raise_time_limit(signum, frame):
    raise CallTimeLimitExceeded()


@contextlib.contextmanager
def call_time_limit(seconds: float | None) -> Iterator[None]:
    """Raises CallTimeLimitExceeded in the body if it runs longer than `seconds` (None/0: no limit)."""
    if not seconds or seconds <= 0 or not limit_is_enforceable():
        yield
        return
    previous_handler = signal.signal(signal.SIGALRM, _raise_time_limit)
    started = time.monotonic()
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_delay > 0:
            remaining = max(outer_delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, remaining, outer_interval)
