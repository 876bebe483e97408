"""The tool process: a worker that holds episodes' API state and runs their tool calls.

Tool calls run model-chosen code paths of the official API classes, and some of them spend minutes in C
(`decimal` at a precision of ten million digits) where no signal handler or thread can stop them. They
therefore run here, in a separate process that the parent kills at the limit (`envtune_jax.environments.hosted_backend`
has the parent's side). The process holds any number of `ToolBackend`s by id and reads two kinds of
message: ("queue", commands), applied in order with no answer (opening a backend, offering tools,
closing a turn, dropping a backend), and ("request", commands), answered with ("ok", the last command's
result, new turn verdicts) or ("raise", exception, traceback). Turn verdicts are kept per backend and
sent with the next answer (each as {backend: (index of the first, verdicts)}), so a turn closes without a
round trip. A failure in queued work is answered to the next request.
Before each call the process writes into the shared `record` which backend and which call (the backend's
call ordinal) is running and since when, on the monotonic clock; after the call it clears the start. A
backend's `refused` calls (ordinal -> reason) are answered with an error string instead of running: that
is how a backend replayed after a kill skips the call that ran too long.
"""

from __future__ import annotations

import ctypes
import importlib
import mmap
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Mapping

from envtune_jax.environments.executor import CallRefused, api_module_names
from envtune_jax.environments.rewards import Verdict
from envtune_jax.environments.tool_backend import ToolBackend
from envtune_jax.untrusted_text import echo

# record fields: doubles in a small file both processes map (backend id, call ordinal, start or 0)
RECORD_BACKEND, RECORD_ORDINAL, RECORD_STARTED = 0, 1, 2
RECORD_BYTES = 3 * 8
_PR_SET_PDEATHSIG = 1


def map_record(fd: int) -> memoryview:
    """The record in the file `fd` (RECORD_BYTES long), as three doubles both processes see."""
    return memoryview(mmap.mmap(fd, RECORD_BYTES)).cast("d")


class CallRecorder:
    """The guard of one hosted backend: numbers its calls, records the running one, refuses marked ones."""

    def __init__(self, backend_id: int, refused: Mapping[int, str], record):
        self.backend_id = backend_id
        self.refused = dict(refused)
        self.record = record
        self.next_ordinal = 0
        self._name = ""

    def __call__(self, name: str) -> "CallRecorder":
        self._name = name
        return self

    def __enter__(self) -> None:
        ordinal = self.next_ordinal
        self.next_ordinal += 1
        reason = self.refused.get(ordinal)
        if reason is not None:
            raise CallRefused(f"{echo(self._name)} {reason}")
        record = self.record
        record[RECORD_BACKEND] = self.backend_id
        record[RECORD_ORDINAL] = ordinal
        record[RECORD_STARTED] = time.monotonic()

    def __exit__(self, *exc_info) -> bool:
        self.record[RECORD_STARTED] = 0.0
        return False


class HostedState:
    """A backend in this process, with the verdicts of its closed turns (and how many were sent)."""

    def __init__(self, backend: ToolBackend):
        self.backend: ToolBackend | None = backend  # None once dropped
        self.verdicts: list[Verdict] = []
        self.sent = 0


def _apply(states: dict[int, HostedState], record, command: tuple[str, int, Any]) -> Any:
    op, backend_id, payload = command
    if op == "open":
        spec, refused = payload
        states[backend_id] = HostedState(ToolBackend(spec, CallRecorder(backend_id, refused, record)))
        return None
    if op == "drop":  # verdicts not sent yet still go out with the next answer
        state = states.get(backend_id)
        if state is not None:
            state.backend = None
            if state.sent == len(state.verdicts):
                del states[backend_id]
        return None
    if op == "sync":  # nothing to do: the answer carries the verdicts
        return None
    if op == "count":
        return sum(state.backend is not None for state in states.values())
    state = states[backend_id]
    if op == "offer":
        return state.backend.offer(payload)
    if op == "execute":
        return state.backend.execute(payload)
    if op == "close_turn":
        state.verdicts.append(state.backend.close_turn(payload))
        return None
    raise ValueError(f"unknown tool process command {op!r}")


def _new_verdicts(states: dict[int, HostedState]) -> dict[int, tuple[int, list[Verdict]]]:
    updates = {}
    for backend_id, state in list(states.items()):
        if state.sent < len(state.verdicts):
            updates[backend_id] = (state.sent, state.verdicts[state.sent :])
            state.sent = len(state.verdicts)
        if state.backend is None:  # dropped, now that its last verdicts are on their way
            del states[backend_id]
    return updates


def serve(connection, record) -> None:
    """The process's loop (see the module docstring); None or a closed connection ends it."""
    states: dict[int, HostedState] = {}
    queued_failure: tuple | None = None
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        kind, commands = message
        try:
            result = None
            for command in commands:
                result = _apply(states, record, command)
            reply = ("ok", result)
        except Exception as exc:  # a fault of ours (tool errors are result strings): the parent raises it
            reply = ("raise", exc, traceback.format_exc())
        if kind == "queue":
            if reply[0] == "raise" and queued_failure is None:
                queued_failure = reply
            continue
        if queued_failure is not None:
            reply, queued_failure = queued_failure, None
        elif reply[0] == "ok":
            reply = ("ok", reply[1], _new_verdicts(states))
        try:
            connection.send(reply)
        except Exception as exc:  # an unpicklable exception or result
            connection.send(
                ("raise", RuntimeError(f"tool process reply could not be sent: {exc!r}"), traceback.format_exc())
            )


def _end_with_parent() -> None:
    """On Linux, asks the kernel to kill this process when its parent ends: a call stuck in C code does
    not read the closed connection, so it would otherwise outlive a parent that was killed. (The kernel
    acts when the parent's thread that started this process ends; the parent then starts another.)"""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


def main(argv: list[str]) -> None:
    """`python -m envtune_jax.environments.tool_host CONNECTION_FD RECORD_FD`: what the parent starts."""
    connection_fd, record_fd = int(argv[0]), int(argv[1])
    _end_with_parent()
    # A Ctrl-C reaches the whole process group: the parent decides what it means (envtune_jax/interrupt.py),
    # and this process ends with it (the closed connection, or the kernel's signal above), without a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in api_module_names():  # loaded before the first request, not during it
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # the request that needs it reports the error
    serve(Connection(connection_fd), map_record(record_fd))


if __name__ == "__main__":
    main(sys.argv[1:])
