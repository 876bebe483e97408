"""Safe executor: official result strings, whitelist, safe ground-truth parsing, pickling."""

from __future__ import annotations

import collections
import pickle

import pytest

from envtune_jax.environments.base import ToolCall
from envtune_jax.environments.bfcl_data import entry_by_id, func_docs
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.environments.executor import SafeExecutor, create_instances, format_result
from envtune_jax.environments.gt_calls import GroundTruthSyntaxError, ground_truth_tool_calls, parse_ground_truth_call

multi_turn_utils = pytest.importorskip("bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils")


def _executor(class_name="GorillaFileSystem", entry_id="multi_turn_base_0"):
    entry = entry_by_id(entry_id)
    instances = create_instances([class_name], entry.initial_config, entry.long_context)
    return SafeExecutor(instances, func_docs(class_name))


class _Dict(dict):
    pass


def test_format_result_follows_the_official_type_rules():
    assert format_result("text") == "text"
    assert format_result({"a": [1, 2]}) == '{"a": [1, 2]}'
    assert format_result({"a": object}) == str({"a": object})  # not JSON-serialisable: str()
    assert format_result([1, "x"]) == "[1, 'x']" and format_result(None) == "None" and format_result(1.5) == "1.5"
    assert format_result(_Dict(a=1)) == "{'a': 1}"  # exact type check, as the official executor does


def test_results_equal_the_official_executor_on_ground_truth_calls():
    """Every ground-truth call of a sample of entries gives the same string as the official (eval) executor."""
    for entry_id in (
        "multi_turn_base_0",
        "multi_turn_long_context_60",
        "multi_turn_base_110",
        "multi_turn_base_160",
        "multi_turn_miss_param_130",
        "multi_turn_long_context_30",
    ):
        entry = entry_by_id(entry_id)
        ours = BfclEpisode(entry)
        ours.reset()
        for turn, sources in enumerate(entry.ground_truth):
            official, _ = multi_turn_utils.execute_multi_turn_func_call(
                sources,
                entry.initial_config,
                entry.involved_classes,
                "executor_test",
                entry_id,
                long_context=entry.long_context,
            )
            for call, expected in zip(ground_truth_tool_calls(sources, entry.involved_classes), official):
                assert ours._execute([call])[0].result == expected, (entry_id, call)


def test_exceptions_become_official_error_strings_and_bad_names_are_not_executed():
    executor = _executor()
    raised = executor.execute("cd", {"no_such_argument": 1})
    assert (
        raised.raised and raised.result.startswith("Error during execution: ") and "unexpected keyword" in raised.result
    )
    for name in ("_load_scenario", "__class__", "ls(); import os", "nonexistent", "eval"):
        result = executor.execute(name, {})
        assert result.raised and result.result == f"Error during execution: name '{name}' is not defined"
    assert executor.execute("ls", ["not", "a", "dict"]).raised
    assert (
        executor.execute("cd", {"folder": float("inf")}).result == "Error during execution: name 'inf' is not defined"
    )


def test_argument_validity_for_the_syntax_reward():
    executor = _executor()
    assert executor.execute("cd", {"folder": "document"}).valid
    assert not executor.execute("cd", {"folder": 3}).valid  # documented type is string
    assert not executor.execute("cd", {}).valid  # missing required argument
    assert not executor.execute("mkdir", {"dir_name": "x", "extra": 1}).valid
    assert not executor.execute("unknown", {}).valid


def test_only_offered_tools_run_unless_allowed():
    entry = entry_by_id("multi_turn_base_0")
    instances = create_instances(["GorillaFileSystem"], entry.initial_config, False)
    docs = [d for d in func_docs("GorillaFileSystem") if d["name"] != "ls"]
    executor = SafeExecutor(instances, docs)
    assert executor.execute("ls", {}).raised
    executor.allow_unoffered(["ls"])
    assert not executor.execute("ls", {}).raised and "ls" not in executor.offered


def test_ground_truth_parsing_is_literal_only():
    parsed = parse_ground_truth_call("sort('final_report.pdf')")
    assert parsed.args == ("final_report.pdf",) and parsed.as_tool_call("GorillaFileSystem") == ToolCall(
        "sort", {"file_name": "final_report.pdf"}
    )
    for bad in ("__import__('os').system('x')", "ls(a=open('f'))", "x.y(1)", "ls(**{'a': 1})", "1 + 2", "ls("):
        with pytest.raises(GroundTruthSyntaxError):
            parse_ground_truth_call(bad)


def test_episodes_pickle_mid_episode():
    entry = entry_by_id("multi_turn_long_context_0")
    env = BfclEpisode(entry)
    env.reset()
    env.step("", ground_truth_tool_calls(entry.ground_truth[0], entry.involved_classes), [])
    clone = pickle.loads(pickle.dumps(env))
    for episode in (env, clone):
        episode.step("", [], [])
    assert clone.outcome() == env.outcome() and clone.agent_results() == env.agent_results()
    counts = collections.Counter(m["role"] for m in clone.step("", [ToolCall("pwd", {})], []).messages)
    assert counts == {"tool": 1}
