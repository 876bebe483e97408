"""Ctrl-C ends an envtune process within about a second, even when its main thread does not come back to
Python (here: it swallows the KeyboardInterrupt, as JAX's garbage-collection callback does), and waits for
held work (an asynchronous checkpoint save) unless Ctrl-C is pressed twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import signal, sys, time
    from envtune_jax import interrupt

    # what Python does at start-up, unless the process was started with SIGINT ignored (a background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert interrupt.install()
    if sys.argv[1] == "hold":
        interrupt.hold_while(lambda: True, "the test's save")
    ready = False
    while True:  # a main thread that never ends the process itself
        try:
            if not ready:
                ready = True
                print("ready", flush=True)
            time.sleep(60)
        except KeyboardInterrupt:
            pass
""")


def _start(mode: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def _seconds_to_exit(process: subprocess.Popen, timeout: float = 10.0) -> float:
    start = time.monotonic()
    process.wait(timeout=timeout)
    return time.monotonic() - start


def test_ctrl_c_ends_the_process_within_two_seconds_whatever_the_main_thread_does():
    process = _start("plain")
    process.send_signal(signal.SIGINT)
    assert _seconds_to_exit(process) < 2.0
    assert process.returncode == 130
    assert process.stderr.read().strip() == "interrupted"


def test_held_work_is_waited_for_and_a_second_ctrl_c_stops_at_once():
    process = _start("hold")
    process.send_signal(signal.SIGINT)
    time.sleep(1.5)  # past the grace period: still alive, waiting for the held work
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    assert _seconds_to_exit(process) < 1.0
    assert process.returncode == 130
    err = process.stderr.read()
    assert "waiting for the test's save to finish" in err and "second Ctrl-C" in err


def test_the_tool_process_leaves_ctrl_c_to_its_parent():
    """A terminal's Ctrl-C reaches the whole process group: the tool process ignores it (no traceback, no
    restart), and the parent decides."""
    import dataclasses

    from envtune_jax.environments.base import ToolCall
    from envtune_jax.environments.bfcl_data import entry_by_id
    from envtune_jax.environments.bfcl_env import BfclEpisode
    from envtune_jax.environments.config import EnvironmentConfig
    from envtune_jax.environments.hosted_backend import tool_host_client

    env = BfclEpisode(
        entry_by_id("multi_turn_base_15"), dataclasses.replace(EnvironmentConfig.evaluation(), call_time_limit_s=5.0)
    )
    env.reset()
    env.step("", [ToolCall("mkdir", {"dir_name": "zz_before"})], [])
    client = tool_host_client()
    pid, started = client.pid, client.processes_started
    os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    listing = env.step("", [ToolCall("ls", {})], []).messages[0]["content"]
    assert "zz_before" in listing
    assert (client.pid, client.processes_started) == (pid, started)
