"""The tool process: a worker that holds episodes' API state and runs their tool calls.

Tool calls run model-chosen code paths of the official API classes, and some of them spend minutes in C
(`decimal` at a precision of ten million digits) where no signal handler or thread can stop them. They
therefore run here, in a separate process that the parent kills at the limit (`environments.hosted_backend`
has the parent's side). The process holds any number of `ToolBackend`s by id and answers requests: a list
of commands, of which only the last one's result is sent back (earlier ones are queued offers, drops, or
the replay of a backend's history). Before each call it writes into the shared `record` which backend and
which call (the backend's call ordinal) is running and since when, on the monotonic clock; after the call
it clears the start. A backend's `refused` calls (ordinal -> reason) are answered with an error string
instead of running: that is how a backend replayed after a kill skips the call that ran too long.
"""
from __future__ import annotations

import time
import traceback
from typing import Any, Mapping

from environments.executor import CallRefused
from environments.tool_backend import ToolBackend
from envtune_jax.untrusted_text import echo

# record fields (a shared array of doubles)
RECORD_BACKEND, RECORD_ORDINAL, RECORD_STARTED = 0, 1, 2
RECORD_SIZE = 3


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


def _apply(backends: dict[int, ToolBackend], record, command: tuple[str, int, Any]) -> Any:
    op, backend_id, payload = command
    if op == "open":
        spec, refused = payload
        backends[backend_id] = ToolBackend(spec, CallRecorder(backend_id, refused, record))
        return None
    if op == "drop":
        backends.pop(backend_id, None)
        return None
    backend = backends[backend_id]
    if op == "offer":
        return backend.offer(payload)
    if op == "execute":
        return backend.execute(payload)
    if op == "close_turn":
        return backend.close_turn(payload)
    raise ValueError(f"unknown tool process command {op!r}")


def serve(connection, record) -> None:
    """The process's loop: one request (a list of commands) in, ("ok", last result) or ("raise", error) out;
    None or a closed connection ends it."""
    backends: dict[int, ToolBackend] = {}
    while True:
        try:
            commands = connection.recv()
        except (EOFError, OSError):
            return
        if commands is None:
            return
        try:
            result = None
            for command in commands:
                result = _apply(backends, record, command)
            reply = ("ok", result)
        except Exception as exc:  # a fault of ours (tool errors are result strings): the parent raises it
            reply = ("raise", exc, traceback.format_exc())
        try:
            connection.send(reply)
        except Exception as exc:  # an unpicklable exception or result
            connection.send(("raise", RuntimeError(f"tool process reply could not be sent: {exc!r}"),
                             traceback.format_exc()))
