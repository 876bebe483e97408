"""The persistent XLA compilation cache of the `envtune` commands.

Compiled programs (those taking ≥ 1 s to compile) are written under a cache folder and reused by any
later run that compiles the same program: a resumed or repeated `envtune train`, `eval` or `generate`
skips the compilations the previous run already paid (what that saves: docs/measurements.md). Folder:
$ENVTUNE_COMPILATION_CACHE if set ("off" disables the cache), else $XDG_CACHE_HOME/envtune/xla, else
~/.cache/envtune/xla. `envtune bench` leaves it off unless the variable names a folder, since compile
seconds are part of what it reports.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "ENVTUNE_COMPILATION_CACHE"
OFF = ("off", "0", "false", "none", "")


def cache_dir(default_on: bool = True) -> Path | None:
    """The folder to use, or None when the cache is off."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    if not default_on:
        return None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "envtune" / "xla"


def enable(default_on: bool = True) -> Path | None:
    """Points JAX's persistent compilation cache at cache_dir(); returns the folder (None: off)."""
    import jax

    folder = cache_dir(default_on)
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
