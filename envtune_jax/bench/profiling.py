"""`--profile DIR` for the benchmarks: a jax.profiler trace (XPlane, viewable in TensorBoard's or
XProf's profile plugin, or Perfetto) of one extra run after the timed ones, so tracing never slows
the reported figures."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def maybe_trace(log_dir: str | None):
    """Traces the block into `log_dir` (created if needed), or does nothing for None."""
    if log_dir is None:
        yield
        return
    import jax

    Path(log_dir).mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(log_dir), create_perfetto_trace=True):
        yield
