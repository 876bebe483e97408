"""Episodes stepped in worker processes give the same results as in-process stepping."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from envtune_jax.environments.bfcl_data import load_entries
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.evaluation import evaluate_bfcl
from envtune_jax.environments.gt_calls import ground_truth_tool_calls
from envtune_jax.environments.policies import OraclePolicy
from envtune_jax.environments.pool import StepAction, split_evenly, step_batch


def test_split_evenly_keeps_order_and_balances():
    chunks = split_evenly(list(range(10)), 3)
    assert chunks == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split_evenly([1], 4) == [[1]] and split_evenly([], 2) == []


def test_step_batch_in_a_process_pool_matches_local_stepping():
    entries = load_entries(["multi_turn_base", "multi_turn_long_context"])[::40]
    config = EnvironmentConfig.training(augmented=True)
    local = [BfclEpisode(e, config) for e in entries]
    remote = [BfclEpisode(e, config) for e in entries]
    for env in local + remote:
        env.reset()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        for turn in range(2):
            actions = [
                StepAction.of("", ground_truth_tool_calls(e.ground_truth[turn], e.involved_classes)) for e in entries
            ]
            actions = [a if a.calls else StepAction.of("", [], ["bad json"]) for a in actions]
            remote, remote_results = step_batch(pool, remote, actions, num_chunks=2)
            local_results = [env.step(a.assistant_text, a.calls, a.format_errors) for env, a in zip(local, actions)]
            assert remote_results == local_results
            ends = [StepAction.of("Done.", [])] * len(entries)
            remote, remote_results = step_batch(pool, remote, ends, num_chunks=2)
            assert remote_results == [
                env.step(a.assistant_text, a.calls, a.format_errors) for env, a in zip(local, ends)
            ]
    assert [env.outcome() for env in remote] == [env.outcome() for env in local]


def test_evaluation_across_workers_matches_single_process():
    entries = load_entries()[::25]
    single = evaluate_bfcl(entries, OraclePolicy.for_bfcl(entries), keep_history=False)
    pooled = evaluate_bfcl(entries, OraclePolicy.for_bfcl(entries), workers=2, keep_history=False)
    assert [r.to_json() for r in pooled] == [r.to_json() for r in single]
    assert all(r.outcome.correct for r in pooled)
