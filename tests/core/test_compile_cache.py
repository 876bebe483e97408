"""envtune_jax/compile_cache.py: which folder the CLI's persistent compilation cache uses, that `bench`
leaves it off by default, and that a second process reuses what the first compiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from envtune_jax import compile_cache

ROOT = Path(__file__).resolve().parents[2]


def test_cache_folder_follows_the_variable_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ENVTUNE_COMPILATION_CACHE", str(tmp_path / "mine"))
    assert compile_cache.cache_dir() == tmp_path / "mine"
    assert compile_cache.cache_dir(default_on=False) == tmp_path / "mine"  # named: on even for bench
    for off in ("off", "0", "OFF", ""):
        monkeypatch.setenv("ENVTUNE_COMPILATION_CACHE", off)
        assert compile_cache.cache_dir() is None
    monkeypatch.delenv("ENVTUNE_COMPILATION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "envtune" / "xla"
    assert compile_cache.cache_dir(default_on=False) is None
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache.cache_dir() == Path.home() / ".cache" / "envtune" / "xla"


def test_a_second_process_reuses_the_first_ones_programs(tmp_path):
    """Two `envtune bench generate` runs with the cache named: the second compiles in a fraction of the time."""
    env = dict(
        os.environ,
        ENVTUNE_COMPILATION_CACHE=str(tmp_path / "cache"),
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )  # cache even quick compiles
    argv = [
        sys.executable,
        "-m",
        "envtune_jax.cli.main",
        "bench",
        "generate",
        "--preset",
        "tiny",
        "--random-weights",
        "--batch",
        "4",
        "--prompt-len",
        "64",
        "--new-tokens",
        "32",
        "--repeats",
        "1",
    ]
    runs = []
    for _ in range(2):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    written = list((tmp_path / "cache").iterdir())
    assert written, "nothing was written to the cache"
    first, second = (sum(r["compile_s"].values()) for r in runs)
    assert second < 0.7 * first, (first, second)
