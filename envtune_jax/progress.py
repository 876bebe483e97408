"""What a long command is doing right now, shown on its progress bar.

Training iterations, benchmark iterations and evaluation rounds report their phase through a callback,
`on_phase(phase, done=None, total=None)`: "rollout" and "environment" with the episodes done / total of
the iteration, "validation" likewise, "update" for the optimizer step. `PhaseDisplay` shows the latest
phase as the postfix of a tqdm bar ("rollout 3/16 episodes") and, while JAX has been compiling for more
than COMPILE_SHOWN_S, "compiling" before it: jax.monitoring marks the start of tracing, lowering and XLA
compilation with a scalar event and their end with a duration event. A drawing thread redraws the bar
every REFRESH_S when the text changed (and, on a terminal, every second anyway, so the elapsed time
moves while the main thread sits in a compilation or a device call); callers only set the text, which
costs nothing per decode round.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Protocol

REFRESH_S = 0.25
COMPILE_SHOWN_S = 0.5  # shorter compilations (many small programs) are not worth a flicker
TICK_S = 1.0

# jax._src.dispatch's compile-stage events (a scalar at the start of each, a duration at its end)
COMPILE_EVENTS = frozenset(
    {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    }
)


class OnPhase(Protocol):
    def __call__(self, phase: str, done: Optional[int] = None, total: Optional[int] = None) -> None: ...


def phase_text(phase: str, done: Optional[int] = None, total: Optional[int] = None) -> str:
    """'rollout 3/16 episodes', 'environment (3/16 episodes done)', 'update'."""
    if done is None or total is None:
        return phase
    if phase == "environment":
        return f"environment ({done}/{total} episodes done)"
    return f"{phase} {done}/{total} episodes"


class PhaseDisplay:
    """`display(phase, done, total)` or `display.show(text)` sets what `bar` (any tqdm) shows after
    `prefix`. A disabled bar starts no thread and listens to nothing. Close it (or use `with`) before
    closing the bar."""

    def __init__(self, bar, prefix: str = ""):
        self.bar = bar
        self.prefix = prefix
        self._text = ""
        self._compiling = 0
        self._compiling_since = 0.0
        self._stop = threading.Event()
        self._thread = None
        self._remove_listeners = None
        if getattr(bar, "disable", False):
            return
        self._remove_listeners = _listen(self._on_compile_start, self._on_compile_end)
        self._tick = TICK_S if _is_terminal(bar) else None
        self._thread = threading.Thread(target=self._draw_loop, name="envtune-progress", daemon=True)
        self._thread.start()

    def __call__(self, phase: str, done: Optional[int] = None, total: Optional[int] = None) -> None:
        self.show(phase_text(phase, done, total))

    def show(self, text: str) -> None:
        self._text = text

    def current(self) -> str:
        """The text the bar shows now (the drawing thread's next draw)."""
        text = f"{self.prefix}{self._text}"
        if self._compiling and time.monotonic() - self._compiling_since >= COMPILE_SHOWN_S:
            text = f"compiling · {text}"
        return text

    def _draw_loop(self) -> None:
        shown, shown_at = None, 0.0
        while not self._stop.wait(REFRESH_S):
            text = self.current()
            now = time.monotonic()
            if text != shown or (self._tick is not None and now - shown_at >= self._tick):
                self.bar.set_postfix_str(text, refresh=True)
                shown, shown_at = text, now

    def _on_compile_start(self, event: str, value, **kwargs) -> None:
        if event in COMPILE_EVENTS:
            if self._compiling == 0:
                self._compiling_since = time.monotonic()
            self._compiling += 1

    def _on_compile_end(self, event: str, duration_secs: float, **kwargs) -> None:
        if event in COMPILE_EVENTS:
            self._compiling = max(0, self._compiling - 1)

    def close(self) -> None:
        if self._remove_listeners is not None:
            self._remove_listeners()
            self._remove_listeners = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            # what stays on the finished bar: the prefix (e.g. the last step's reward), else the last phase
            self.bar.set_postfix_str(self.prefix.rstrip(" |") or self._text, refresh=False)

    def __enter__(self) -> "PhaseDisplay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(bar) -> bool:
    stream = getattr(bar, "fp", None)
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def _listen(on_start: Callable, on_end: Callable) -> Callable[[], None] | None:
    """Registers the compile listeners; returns the function that removes them (None: this JAX lacks them)."""
    import jax

    monitoring = jax.monitoring
    if not all(
        hasattr(monitoring, name)
        for name in (
            "register_scalar_listener",
            "unregister_scalar_listener",
            "register_event_duration_secs_listener",
            "unregister_event_duration_listener",
        )
    ):
        return None
    monitoring.register_scalar_listener(on_start)
    monitoring.register_event_duration_secs_listener(on_end)

    def remove() -> None:
        monitoring.unregister_scalar_listener(on_start)
        monitoring.unregister_event_duration_listener(on_end)

    return remove
