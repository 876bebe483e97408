"""Tool calls under a time limit that holds: backends in a warm tool process, killed and replaced at the limit.

`open_backend(spec, limit_s)` gives an episode its API state: a plain in-process `ToolBackend` when there
is no limit, else a `HostedBackend`, a handle on a backend that lives in this process's tool process
(`envtune_jax.environments.tool_host`; one per process, started on first use, kept warm). Executing a step's calls is
one round trip. Opening a backend is sent at once without waiting (its scenario loads meanwhile);
offering tools, closing a turn and dropping a backend ride along with the next message (a turn's verdict
comes back with a later answer, or with one round trip when it is asked for first). A turn thus costs
one round trip per tool-calling step, and an episode one more for its last verdict.

The limit: while the parent waits for an answer, it watches the call the tool process says is running (a
shared record of backend, call ordinal and start time) and, once that call has run `limit_s`, kills the
process. A call that ends the process otherwise (a crash, the kernel's out-of-memory killer) is treated
alike. The call is then marked refused in its backend (the reason becomes its error string, "Error during
execution: <tool> did not finish within 5 s"), a fresh tool process is started, and the backend is
rebuilt there by replaying its history (everything sent for it since it was opened) with that call
refused. Backends are deterministic (seeded ids, counters), so the rebuilt state is the state before the
call: a call that ran too long has no effect, whatever it had done when it was stopped. Other backends
of the killed process are rebuilt the same way when they are next used. A replayed call that no longer
finishes in time is refused in turn (each round refuses one more call, so recovery ends).

A `HostedBackend` pickles as its history and is rebuilt in the tool process of whichever process
unpickles it, so episodes can still be shipped to worker processes.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any, Mapping, Sequence

from envtune_jax.environments import tool_host
from envtune_jax.environments.executor import ExecutedCall
from envtune_jax.environments.gt_calls import GroundTruthCall
from envtune_jax.environments.rewards import Verdict
from envtune_jax.environments.tool_backend import BackendSpec, ToolBackend

IDLE_POLL_S = 0.1  # how often the parent looks at the record while no call runs (a call may start meanwhile)
MAX_POLL_S = 60.0
_UNEXPLAINED_STOP = object()


class ToolHostError(RuntimeError):
    """The tool process failed in a way no tool call explains (a fault of ours, not of a call)."""


class DeferredVerdict:
    """A closed turn's verdict, fetched from the backend when first asked for (picklable)."""

    def __init__(self, backend: "HostedBackend", index: int):
        self.backend, self.index = backend, index

    def __call__(self) -> Verdict:
        return self.backend.verdict(self.index)


class HostedBackend:
    """A handle on one episode's backend in the tool process; the methods of ToolBackend."""

    def __init__(self, spec: BackendSpec, limit_s: float):
        self.spec = spec
        self.limit_s = float(limit_s)
        self.refused: dict[int, str] = {}  # call ordinal -> reason (calls that stopped the process)
        self.history: list[tuple[str, Any]] = []  # (op, payload) of everything sent since opened
        self.verdicts: list[Verdict] = []  # of the turns closed so far, as far as answered
        self.closed_turns = 0
        self.closed = False
        self.backend_id: int | None = None
        self.host_token: object | None = None  # the tool process holding it (None: rebuild on next use)
        _client().open(self)

    def offer(self, names: Sequence[str]) -> None:
        self._send_later("offer", list(names))

    def execute(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> list[ExecutedCall]:
        self.history.append(("execute", list(calls)))
        return _client().request(self, None)

    def close_turn(self, truth_calls: Sequence[GroundTruthCall]) -> DeferredVerdict:
        self._send_later("close_turn", list(truth_calls))
        self.closed_turns += 1
        return DeferredVerdict(self, self.closed_turns - 1)

    def verdict(self, index: int) -> Verdict:
        if index >= len(self.verdicts):
            _client().request(self, ("sync", None))
        return self.verdicts[index]

    def close(self) -> None:
        """Frees the backend in the tool process (the episode is over)."""
        if not self.closed:
            self.closed = True
            _client().send_later(self, ("drop", None))

    def _send_later(self, op: str, payload: Any) -> None:
        self.history.append((op, payload))
        _client().send_later(self, (op, payload))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["backend_id"], state["host_token"] = None, None
        return state


class ToolHostClient:
    """This process's side of its tool process: starts it, sends to it, enforces the limit, replaces it."""

    def __init__(self):
        self._lock = threading.RLock()
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._readable: selectors.BaseSelector | None = None
        self._record = None
        self._token: object | None = None
        self._dropped: collections.deque = collections.deque()  # ids of garbage-collected handles
        self._queued: list[tuple[str, int, Any]] = []  # commands for the current process's next message
        self._ids = itertools.count()
        self._live: weakref.WeakValueDictionary[int, HostedBackend] = weakref.WeakValueDictionary()
        self.processes_started = 0

    # -- the process ------------------------------------------------------------------------------
    def _start(self) -> None:
        """Starts a tool process: a fresh interpreter running `envtune_jax.environments.tool_host` (not a
        multiprocessing child, which would import this process's __main__ again), joined to this one by
        a socket pair and a mapped record file."""
        ours, theirs = socket.socketpair()
        record_file = tempfile.TemporaryFile(prefix="envtune-tool-record-")
        record_file.truncate(tool_host.RECORD_BYTES)
        fds = (theirs.fileno(), record_file.fileno())
        path = os.pathsep.join(entry for entry in sys.path if entry)
        process = subprocess.Popen(
            [sys.executable, "-m", "envtune_jax.environments.tool_host", *map(str, fds)],
            pass_fds=fds,
            env={**os.environ, "PYTHONPATH": path},
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._process, self._connection = process, Connection(ours.detach())
        self._readable = selectors.DefaultSelector()  # kept for the process's life (Connection.poll makes one per call)
        self._readable.register(self._connection, selectors.EVENT_READ)
        self._record = tool_host.map_record(record_file.fileno())
        record_file.close()  # the mapping keeps the memory
        self._token = object()
        self._dropped.clear()
        self._queued = []
        self.processes_started += 1

    def _stop(self, kill: bool) -> int | None:
        """Ends the tool process (killed, or asked to finish); returns its exit code."""
        process, connection = self._process, self._connection
        self._process = self._connection = None
        self._token = None
        if process is None:
            return None
        if not kill:
            try:
                connection.send(None)
                process.wait(timeout=5.0)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if process.poll() is None:
            process.kill()
        process.wait()
        self._readable.close()
        connection.close()
        return process.returncode

    def close(self) -> None:
        """Lets the tool process finish (a later use starts a new one)."""
        with self._lock:
            self._stop(kill=False)

    def round_trip_s(self) -> float:
        """Seconds one empty request takes (what each tool-calling step adds, besides moving its data)."""
        with self._lock:
            if self._process is None:
                self._start()
            started = time.perf_counter()
            self._connection.send(("request", self._take_queued()))
            reply = self._await_reply()
            if not isinstance(reply, tuple) or reply[0] != "ok":
                raise ToolHostError(f"the tool process did not answer an empty request: {reply!r}")
            return time.perf_counter() - started

    def backends_held(self) -> int:
        """How many episodes' API state the tool process holds (finished episodes free theirs)."""
        with self._lock:
            if self._process is None:
                return 0
            self._connection.send(("request", self._take_queued() + [("count", -1, None)]))
            reply = self._await_reply()
            if not isinstance(reply, tuple) or reply[0] != "ok":
                raise ToolHostError(f"the tool process did not answer: {reply!r}")
            return reply[1]

    @property
    def pid(self) -> int | None:
        """The running tool process's id (None if none runs)."""
        return self._process.pid if self._process is not None else None

    # -- messages ---------------------------------------------------------------------------------
    def _held(self, backend: HostedBackend) -> bool:
        return backend.host_token is not None and backend.host_token is self._token

    def _rebuild_commands(self, backend: HostedBackend) -> list[tuple[str, int, Any]]:
        """Makes the current process hold `backend`: the commands that open it and replay its history."""
        backend.backend_id, backend.host_token = next(self._ids), self._token
        self._live[backend.backend_id] = backend
        weakref.finalize(backend, self._drop_later, backend.backend_id, self._token)
        commands = [("open", backend.backend_id, (backend.spec, dict(backend.refused)))]
        return commands + [(op, backend.backend_id, payload) for op, payload in backend.history]

    def open(self, backend: HostedBackend) -> None:
        """Opens a new backend in the tool process now (its scenario loads while this process goes on)."""
        with self._lock:
            if self._process is None:
                self._start()
            self._send_without_answer(self._take_queued() + self._rebuild_commands(backend))

    def send_later(self, backend: HostedBackend, command: tuple[str, Any]) -> None:
        """Queues a command that needs no answer for the next message, if the current process holds the
        backend (else its history will rebuild it when it is next used). Every message costs both
        processes a wake-up, so these cheap commands ride along with the next one."""
        with self._lock:
            if self._held(backend):
                self._queued.append((command[0], backend.backend_id, command[1]))

    def _take_queued(self) -> list[tuple[str, int, Any]]:
        drops = [("drop", self._dropped.popleft(), None) for _ in range(len(self._dropped))]
        queued, self._queued = self._queued, []
        return queued + drops

    def _send_without_answer(self, commands: list) -> None:
        try:
            self._connection.send(("queue", commands))
        except OSError:  # the process is gone: the next request notices and rebuilds what it needs
            self._stop(kill=True)

    def request(self, backend: HostedBackend, command: tuple[str, Any] | None) -> Any:
        """The answer to `command` (None: the backend's last history entry) for `backend`."""
        with self._lock:
            unexplained_stops = 0
            while True:
                if self._process is None:
                    self._start()
                commands = self._take_queued()
                if not self._held(backend):
                    commands += self._rebuild_commands(backend)
                elif command is None:
                    op, payload = backend.history[-1]
                    commands.append((op, backend.backend_id, payload))
                if command is not None:
                    commands.append((command[0], backend.backend_id, command[1]))
                try:
                    self._connection.send(("request", commands))
                except OSError:  # it died while idle
                    self._stop(kill=True)
                    reply = _UNEXPLAINED_STOP
                else:
                    reply = self._await_reply()
                if reply is _UNEXPLAINED_STOP:  # start over once (a process may die with the thread that
                    unexplained_stops += 1  # started it, see tool_host); twice is a fault of ours
                    if unexplained_stops > 1:
                        raise ToolHostError("the tool process ended twice outside any tool call")
                    continue
                if reply is None:
                    continue  # the process was stopped and a call refused: rebuild and ask again
                if reply[0] == "raise":
                    raise reply[1]
                self._store_verdicts(reply[2])
                return reply[1]

    def _store_verdicts(self, updates: Mapping[int, tuple[int, list[Verdict]]]) -> None:
        for backend_id, (start, verdicts) in updates.items():
            backend = self._live.get(backend_id)
            if backend is not None and self._held(backend):
                backend.verdicts[start : start + len(verdicts)] = verdicts

    def _drop_later(self, backend_id: int, token: object) -> None:
        if token is self._token:  # a garbage-collected handle: free its backend with the next message
            self._dropped.append(backend_id)

    def _await_reply(self) -> Any:
        """The answer; None after the tool process was stopped (a call ran past its limit or ended the
        process; that call is now refused in its backend); _UNEXPLAINED_STOP if it ended outside a call."""
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
                if self._readable.select(min(wait, MAX_POLL_S)):  # an answer, or the end of the process
                    return connection.recv()
            except (EOFError, OSError):
                exit_code = self._stop(kill=True)
                return None if self._refuse_running_call(exit_code) else _UNEXPLAINED_STOP

    def _limit_of(self, backend_id: float) -> float:
        backend = self._live.get(int(backend_id))
        return backend.limit_s if backend is not None else MAX_POLL_S

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
            atexit.register(_CLIENT.close)
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
