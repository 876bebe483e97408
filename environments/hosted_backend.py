"""Tool calls under a time limit that holds: backends in a warm tool process, killed and replaced at the limit.

`open_backend(spec, limit_s)` gives an episode its API state: a plain in-process `ToolBackend` when there
is no limit, else a `HostedBackend`, a handle on a backend that lives in this process's tool process
(`environments.tool_host`; one per process, started on first use, kept warm). Each `execute` or
`close_turn` is one round trip; offers and drops travel with the next one.

The limit: while a request runs, the parent watches the call the tool process says is running (a shared
record of backend, call ordinal and start time) and, once that call has run `limit_s`, kills the process.
A call that ends the process otherwise (a crash, the kernel's out-of-memory killer) is treated alike.
The call is then marked refused in its backend (the reason becomes its error string,
"Error during execution: <tool> did not finish within 5 s"), a fresh tool process is started, and the
backend is rebuilt there by replaying its history (every request since it was opened) with that call
refused. Backends are deterministic (seeded ids, counters), so the rebuilt state is the state before the
call: a call that ran too long has no effect, whatever it had done when it was stopped. Other backends
of the killed process are rebuilt the same way when they are next used. A replayed call that no longer
finishes in time is refused in turn (each round refuses one more call, so recovery ends).

A `HostedBackend` pickles as its history and is rebuilt in the tool process of whichever process
unpickles it, so episodes can still be shipped to worker processes.
"""
from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import threading
import time
import weakref
from typing import Any, Mapping, Sequence

from environments.executor import ExecutedCall, api_module_names
from environments.gt_calls import GroundTruthCall
from environments.tool_backend import BackendSpec, ToolBackend
from environments import tool_host

IDLE_POLL_S = 0.1  # how often the parent looks at the record while no call runs (a call may start meanwhile)
MAX_POLL_S = 60.0


class ToolHostError(RuntimeError):
    """The tool process failed in a way no tool call explains (a fault of ours, not of a call)."""


class HostedBackend:
    """A handle on one episode's backend in the tool process; same methods as ToolBackend."""

    def __init__(self, spec: BackendSpec, limit_s: float):
        self.spec = spec
        self.limit_s = float(limit_s)
        self.refused: dict[int, str] = {}  # call ordinal -> reason (calls that stopped the process)
        self.history: list[tuple[str, Any]] = []  # (op, payload) of every request since opened
        self.closed = False
        self.backend_id: int | None = None
        self.host_token: object | None = None  # the tool process holding it (None: rebuild on next use)

    def offer(self, tool_docs: Sequence[Mapping[str, Any]]) -> None:
        docs = [dict(doc) for doc in tool_docs]
        self.history.append(("offer", docs))
        _client().queue(self, ("offer", docs))

    def execute(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> list[ExecutedCall]:
        return self._request("execute", list(calls))

    def close_turn(self, truth_calls: Sequence[GroundTruthCall]) -> tuple[list[str], bool]:
        return self._request("close_turn", list(truth_calls))

    def close(self) -> None:
        """Frees the backend in the tool process (the episode is over)."""
        if not self.closed:
            self.closed = True
            _client().queue(self, ("drop", None))

    def _request(self, op: str, payload: Any) -> Any:
        if self.closed:
            raise ToolHostError("this backend was closed: its episode is over")
        self.history.append((op, payload))
        return _client().request(self)

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "limit_s": self.limit_s, "refused": dict(self.refused),
                "history": list(self.history), "closed": self.closed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.backend_id, self.host_token = None, None


class ToolHostClient:
    """This process's side of its tool process: starts it, sends requests, enforces the limit, replaces it."""

    def __init__(self):
        self._lock = threading.RLock()
        self._process = None
        self._connection = None
        self._record = None
        self._token: object | None = None
        self._queued: collections.deque = collections.deque()  # commands for the current process
        self._ids = itertools.count()
        self._live: weakref.WeakValueDictionary[int, HostedBackend] = weakref.WeakValueDictionary()
        self.processes_started = 0

    # -- the process ------------------------------------------------------------------------------
    def _start(self) -> None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if context.get_start_method() == "forkserver":  # each new tool process starts with the API classes loaded
            context.set_forkserver_preload(["environments.tool_host", *api_module_names()])
        parent_end, child_end = context.Pipe()
        record = context.RawArray("d", tool_host.RECORD_SIZE)
        process = context.Process(target=tool_host.serve, args=(child_end, record), daemon=True,
                                  name="envtune-tool-process")
        process.start()
        child_end.close()
        self._process, self._connection, self._record = process, parent_end, record
        self._token = object()
        self._queued.clear()
        self.processes_started += 1

    def _stop(self, kill: bool) -> int | None:
        """Ends the tool process (killed, or asked to finish); returns its exit code."""
        process, connection = self._process, self._connection
        self._process = self._connection = None
        self._token = None
        if process is None:
            return None
        if kill:
            process.kill()
        else:
            try:
                connection.send(None)
            except (OSError, ValueError):
                pass
        process.join(timeout=None if kill else 5.0)
        if process.is_alive():
            process.kill()
            process.join()
        connection.close()
        return process.exitcode

    def close(self) -> None:
        with self._lock:
            self._stop(kill=False)

    # -- requests ---------------------------------------------------------------------------------
    def queue(self, backend: HostedBackend, command: tuple[str, Any]) -> None:
        """Sends `command` with the next request, if the current process holds the backend (else its
        history will rebuild it)."""
        if backend.host_token is not None and backend.host_token is self._token:
            self._queued.append((command[0], backend.backend_id, command[1]))

    def request(self, backend: HostedBackend) -> Any:
        """Runs the backend's last history entry in the tool process and returns its result."""
        with self._lock:
            while True:
                if self._process is None:
                    self._start()
                commands = [self._queued.popleft() for _ in range(len(self._queued))]
                if backend.host_token is not self._token:  # not held by this process: rebuild it there
                    backend.backend_id, backend.host_token = next(self._ids), self._token
                    self._live[backend.backend_id] = backend
                    weakref.finalize(backend, self._drop_later, backend.backend_id, self._token)
                    commands.append(("open", backend.backend_id, (backend.spec, dict(backend.refused))))
                    commands += [(op, backend.backend_id, payload) for op, payload in backend.history]
                else:
                    op, payload = backend.history[-1]
                    commands.append((op, backend.backend_id, payload))
                self._connection.send(commands)
                reply = self._await_reply()
                if reply is not None:
                    if reply[0] == "ok":
                        return reply[1]
                    raise reply[1]

    def _drop_later(self, backend_id: int, token: object) -> None:
        if token is self._token:  # a garbage-collected handle: free its backend with the next request
            self._queued.append(("drop", backend_id, None))

    def _await_reply(self) -> tuple | None:
        """The reply, or None after the tool process was stopped (a call ran past its limit or ended the
        process; that call is now refused in its backend)."""
        record, connection = self._record, self._connection
        while True:
            started = record[tool_host.RECORD_STARTED]
            wait = IDLE_POLL_S
            if started > 0.0:  # a call runs: wait until its deadline at most
                wait = started + self._limit_of(record[tool_host.RECORD_BACKEND]) - time.monotonic()
                if wait <= 0.0:
                    self._stop(kill=True)
                    self._refuse_running_call(None)
                    return None
            try:
                if connection.poll(min(wait, MAX_POLL_S)):
                    return connection.recv()
            except (EOFError, OSError):
                exit_code = self._stop(kill=True)
                if not self._refuse_running_call(exit_code):
                    raise ToolHostError(f"the tool process ended outside any tool call ({_describe(exit_code)})")
                return None

    def _limit_of(self, backend_id: float) -> float:
        backend = self._live.get(int(backend_id))
        return backend.limit_s if backend is not None else float("inf")

    def _refuse_running_call(self, exit_code: int | None) -> bool:
        """After the process stopped: marks the call the record shows as refused; False if none ran."""
        record = self._record
        started = record[tool_host.RECORD_STARTED]
        backend = self._live.get(int(record[tool_host.RECORD_BACKEND]))
        if started <= 0.0 or backend is None:
            return False
        ordinal = int(record[tool_host.RECORD_ORDINAL])
        if exit_code is None:  # we stopped it: only a call that really ran past the limit is refused
            if time.monotonic() - started < backend.limit_s:
                return False
            backend.refused[ordinal] = f"did not finish within {backend.limit_s:g} s"
        else:
            backend.refused[ordinal] = f"ended the tool process ({_describe(exit_code)})"
        return True


def _describe(exit_code: int | None) -> str:
    if exit_code is None:
        return "still running"
    return f"killed by signal {-exit_code}" if exit_code < 0 else f"exit code {exit_code}"


_CLIENT: ToolHostClient | None = None
_CLIENT_LOCK = threading.Lock()


def _client() -> ToolHostClient:
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None:
            _CLIENT = ToolHostClient()
        return _CLIENT


def tool_host_client() -> ToolHostClient:
    """This process's tool process client (created on first use)."""
    return _client()


def _forget_client_after_fork() -> None:
    global _CLIENT
    _CLIENT = None  # a forked child gets its own tool process; the parent's belongs to the parent


os.register_at_fork(after_in_child=_forget_client_after_fork)


def open_backend(spec: BackendSpec, limit_s: float | None) -> ToolBackend | HostedBackend:
    """An episode's API state: in this process without a limit, else in the tool process under `limit_s`."""
    if limit_s is None:
        return ToolBackend(spec)
    return HostedBackend(spec, limit_s)
