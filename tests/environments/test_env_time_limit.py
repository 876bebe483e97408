"""The per-call time limit holds for calls that never return to Python: the tool process is killed at the
limit, the call becomes an error string without effect, and every episode goes on from where it was."""

from __future__ import annotations

import dataclasses
import gc
import os
import pickle
import signal
import threading
import time

from envtune_jax.environments.base import ToolCall
from envtune_jax.environments.bfcl_data import entry_by_id, load_entries
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.evaluation import evaluate_bfcl
from envtune_jax.environments.gt_calls import ground_truth_tool_calls
from envtune_jax.environments.hosted_backend import tool_host_client
from envtune_jax.environments.policies import OraclePolicy

# decimal's square root at three million digits runs for minutes inside C: no signal handler or thread
# of the calling process gets a chance to stop it.
SLOW_CALL = ToolCall("square_root", {"number": 2, "precision": 3_000_000})


def _config(limit_s):
    return dataclasses.replace(EnvironmentConfig.evaluation(), call_time_limit_s=limit_s)


def _results(env, calls):
    return [message["content"] for message in env.step("", calls, []).messages]


def test_a_call_stuck_in_c_code_stops_at_the_limit_and_every_episode_goes_on():
    math_and_files, other = entry_by_id("multi_turn_base_15"), entry_by_id("multi_turn_base_28")
    first, second = BfclEpisode(math_and_files, _config(1.0)), BfclEpisode(other, _config(1.0))
    for env in (first, second):
        env.reset()
    _results(first, [ToolCall("mkdir", {"dir_name": "zz_before"})])
    _results(second, [ToolCall("mkdir", {"dir_name": "zz_other"})])
    started_processes = tool_host_client().processes_started

    started = time.monotonic()
    results = _results(first, [SLOW_CALL, ToolCall("mkdir", {"dir_name": "zz_after"})])
    assert time.monotonic() - started < 15.0  # the call alone would run for minutes
    assert results[0] == "Error during execution: square_root did not finish within 1 s"
    assert results[1] == "None"  # mkdir's result: the step went on after the stopped call
    assert tool_host_client().processes_started == started_processes + 1

    # Both episodes were rebuilt in the new tool process with what they had done, and nothing else.
    listing = _results(first, [ToolCall("ls", {})])[0]
    assert "zz_before" in listing and "zz_after" in listing
    assert "zz_other" in _results(second, [ToolCall("ls", {})])[0]
    # A copy rebuilds the same state, and refuses the stopped call again rather than running it.
    clone = pickle.loads(pickle.dumps(first))
    assert _results(clone, [ToolCall("ls", {})]) == _results(first, [ToolCall("ls", {})])
    assert clone.agent_results() == first.agent_results()


def test_a_call_that_ends_the_tool_process_is_refused_and_the_episode_goes_on():
    env = BfclEpisode(entry_by_id("multi_turn_base_15"), _config(60.0))
    env.reset()
    _results(env, [ToolCall("mkdir", {"dir_name": "zz_before"})])
    killer = threading.Timer(0.5, os.kill, (tool_host_client().pid, signal.SIGKILL))  # as the OOM killer would
    killer.start()
    try:
        results = _results(env, [SLOW_CALL])
    finally:
        killer.cancel()
    assert results == ["Error during execution: square_root ended the tool process (killed by signal 9)"]
    assert "zz_before" in _results(env, [ToolCall("ls", {})])[0]


def test_the_tool_process_and_the_in_process_reference_give_identical_records():
    entries = load_entries()[::40]
    hosted = evaluate_bfcl(entries, OraclePolicy.for_bfcl(entries), _config(5.0))
    reference = evaluate_bfcl(entries, OraclePolicy.for_bfcl(entries), _config(None))
    assert [(r.to_json(), r.steps) for r in hosted] == [(r.to_json(), r.steps) for r in reference]
    assert all(r.outcome.correct for r in hosted)


def test_finished_episodes_free_their_state_and_turn_verdicts_survive_a_restart():
    entries = load_entries()[::100]
    records = evaluate_bfcl(entries, OraclePolicy.for_bfcl(entries), _config(5.0))
    assert all(r.outcome.correct for r in records)
    gc.collect()
    assert tool_host_client().backends_held() == 0

    # Turn 0 closes (its verdict is not fetched yet), then a call of turn 1 stops the tool process: the
    # rebuilt backend recomputes the verdict, and the stopped call changes nothing.
    entry = entry_by_id("multi_turn_base_15")
    env = BfclEpisode(entry, _config(1.0))
    env.reset()
    for turn, sources in enumerate(entry.ground_truth):
        calls = ground_truth_tool_calls(sources, entry.involved_classes)
        if turn == 1:
            env.step("", [SLOW_CALL], [])
        if calls:
            env.step("", calls, [])
        env.step("Done.", [], [])
    outcome = env.outcome()
    assert outcome.correct and outcome.turn_rewards == [1.0] * entry.num_turns
    assert outcome.counters["tool_errors"] == 1
