"""Evaluation keeps the official harness's history, exactly, after unusual model outputs.

The official `QwenFCHandler.inference_multi_turn_prompting` runs entries with its generation call replaced
by scripted outputs; our evaluation driver plays the same outputs through a policy that renders each
prompt it is given. Every prompt of every step must be the same string on both sides (the model would
be given the same tokens), the recorded steps the same, and where the official harness fails (a kept
tool call it cannot render) our entry must be an inference error. Outputs are built from each entry's
ground-truth calls: arguments as JSON strings, extra keys, other key orders, compact or non-ASCII JSON,
text beside the calls, repeated calls, reasoning (with and without calls inside it), undecodable calls
(a non-object, a call wrapped under "function", list or null arguments), bodies that are not JSON,
blocks without their newlines, non-string names, NaN arguments, empty replies. The official executor
evals strings: it only sees calls written here from ground-truth literals and fixed names.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import types
import warnings

import pytest

from envtune_jax.chat.render import render_messages
from envtune_jax.environments.bfcl_data import entry_by_id
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.evaluation import run_episodes
from envtune_jax.environments.gt_calls import ground_truth_tool_calls
from envtune_jax.environments.policies import PolicyStep

qwen_fc = pytest.importorskip("bfcl_eval.model_handler.local_inference.qwen_fc")
from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils  # noqa: E402
from bfcl_eval.utils import load_dataset_entry  # noqa: E402

ENTRY_IDS = [
    f"multi_turn_{category}_{index}"
    for category, index in itertools.product(("base", "long_context", "miss_func", "miss_param"), (3, 57, 112, 160))
]
_run_counter = itertools.count()


def _block(value, ensure_ascii: bool = True, separators=(", ", ": ")) -> str:
    return "<tool_call>\n" + json.dumps(value, ensure_ascii=ensure_ascii, separators=separators) + "\n</tool_call>"


def _calls_text(calls, shape) -> str:
    return "\n".join(_block(shape(call.name, call.arguments)) for call in calls)


def _first_arguments(calls) -> tuple[str, dict]:
    call = calls[0]
    return call.name, dict(call.arguments)


# kind -> (output of the target step from its turn's ground-truth calls, target: "first" or "last" turn with calls)
KINDS = {
    "plain": (lambda c: _calls_text(c, lambda n, a: {"name": n, "arguments": a}), "first"),
    "string_arguments": (
        lambda c: _calls_text(
            c,
            lambda n, a: {
                "name": n,
                "arguments": json.dumps({**a, "note": "é"}, separators=(",", ":"), ensure_ascii=False),
            },
        ),
        "first",
    ),
    "string_arguments_spaced": (
        lambda c: _calls_text(c, lambda n, a: {"name": n, "arguments": json.dumps(a)}),
        "first",
    ),
    "extra_keys": (
        lambda c: "\n".join(
            _block({"name": x.name, "arguments": x.arguments, "id": f"call_{i}"}) for i, x in enumerate([c[0], *c])
        ),
        "first",
    ),
    "key_order_compact": (
        lambda c: "\n".join(_block({"arguments": x.arguments, "name": x.name}, False, (",", ":")) for x in c),
        "first",
    ),
    "non_ascii": (
        lambda c: _block({"name": c[0].name, "arguments": {**c[0].arguments, "note": "café ☕"}}, False),
        "first",
    ),
    "text_beside": (
        lambda c: "Let me do that.\n" + _calls_text(c, lambda n, a: {"name": n, "arguments": a}) + "\nDone soon.",
        "first",
    ),
    "repeated": (
        lambda c: "\n".join(
            [_block({"name": c[0].name, "arguments": c[0].arguments})] * 2
            + [_calls_text(c, lambda n, a: {"name": n, "arguments": a})]
        ),
        "first",
    ),
    "reasoning": (
        lambda c: "<think>\nI should act.\n</think>\n\n" + _calls_text(c, lambda n, a: {"name": n, "arguments": a}),
        "first",
    ),
    "call_in_reasoning": (
        lambda c: (
            "<think>\nMaybe "
            + _block({"name": "pwd", "arguments": {}})
            + "\n</think>\n\n"
            + _calls_text(c, lambda n, a: {"name": n, "arguments": a})
        ),
        "first",
    ),
    "only_reasoning_call": (
        lambda c: "<think>\n" + _block({"name": c[0].name, "arguments": c[0].arguments}) + "\n</think>\n\nOK.",
        "first",
    ),
    "wrapped_function": (lambda c: _block({"function": {"name": c[0].name, "arguments": c[0].arguments}}), "first"),
    "list_arguments": (lambda c: _block({"name": c[0].name, "arguments": [1, 2]}, True, (",", ":")), "first"),
    "null_arguments": (lambda c: _block({"name": c[0].name, "arguments": None}, True, (",", ":")), "first"),
    "string_not_object": (lambda c: _block({"name": c[0].name, "arguments": "[1]"}, True, (",", ":")), "first"),
    "bad_json_beside": (
        lambda c: (
            '<tool_call>\n{"name": "pwd", "arguments": {\n</tool_call>\n'
            + _calls_text(c, lambda n, a: {"name": n, "arguments": a})
        ),
        "first",
    ),
    "no_newlines": (
        lambda c: "<tool_call>" + json.dumps({"name": c[0].name, "arguments": c[0].arguments}) + "</tool_call>",
        "first",
    ),
    "nan_argument": (
        lambda c: _block(
            {"name": c[0].name, "arguments": {k: float("nan") for k in c[0].arguments} or {"x": float("nan")}}
        ),
        "first",
    ),
    "empty": (lambda c: "", "first"),
    "not_an_object_last_turn": (
        lambda c: _block([1, 2]) + "\n" + _calls_text(c, lambda n, a: {"name": n, "arguments": a}),
        "last",
    ),
    "not_an_object": (
        lambda c: _block([1, 2]) + "\n" + _calls_text(c, lambda n, a: {"name": n, "arguments": a}),
        "first",
    ),
    "missing_arguments": (lambda c: _block({"name": c[0].name}), "first"),
    "number_name": (lambda c: _block({"name": 7, "arguments": {}}), "first"),
}
# Kinds after which the official formatter cannot render the history (its next query fails).
BREAKS_HISTORY = {"not_an_object", "missing_arguments", "number_name"}


def _script(entry, kind: str) -> list[str]:
    """The outputs the model gives, in order: per turn, the target step, the plain calls, a reply."""
    make, where = KINDS[kind]
    turns = [ground_truth_tool_calls(calls, entry.involved_classes) for calls in entry.ground_truth]
    with_calls = [t for t, calls in enumerate(turns) if calls]
    target = with_calls[0] if where == "first" else with_calls[-1]
    outputs = []
    for t, calls in enumerate(turns):
        if t == target:
            outputs.append(make(calls))
        if calls:
            outputs.append(_calls_text(calls, lambda n, a: {"name": n, "arguments": a}))
        outputs.append("Done.")
    return outputs


class _ScriptedPolicy:
    """Plays each episode's scripted outputs in order ("Done." once they run out), recording every prompt."""

    name = "scripted"

    def __init__(self, scripts: dict[str, list[str]]):
        self.queues = {episode: iter(outputs) for episode, outputs in scripts.items()}
        self.prompts: dict[str, list[str]] = {episode: [] for episode in scripts}

    def act(self, states):
        steps = []
        for state in states:
            self.prompts[state.episode_id].append(render_messages(state.messages, state.tools, "qwen_fc", True))
            steps.append(PolicyStep(next(self.queues[state.episode_id], "Done.")))
        return steps


def _official_run(test_entry: dict, outputs: list[str]) -> tuple[list[str], list | None]:
    """(prompts, recorded steps; None when the harness failed) of the official multi-turn inference."""
    handler = object.__new__(qwen_fc.QwenFCHandler)
    handler.model_name_underline_replaced = f"history_check_{next(_run_counter)}"
    queue, prompts = iter(outputs), []

    def query(inference_data):
        prompts.append(handler._format_prompt(inference_data["message"], inference_data["function"]))
        choice = types.SimpleNamespace(text=next(queue, "Done."))
        usage = types.SimpleNamespace(prompt_tokens=0, completion_tokens=0)
        return types.SimpleNamespace(choices=[choice], usage=usage), 0.0

    handler._query_prompting = query
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # its eval of "7()" (a number as the name)
            steps, _ = handler.inference_multi_turn_prompting(copy.deepcopy(test_entry), False, True)
    except Exception:
        steps = None
    finally:  # the official executor keeps its instances in module globals
        for name in [n for n in vars(multi_turn_utils) if n.startswith(handler.model_name_underline_replaced)]:
            delattr(multi_turn_utils, name)
    return prompts, steps


@pytest.fixture(scope="module")
def official_entries() -> dict[str, dict]:
    categories = {entry_id.rsplit("_", 1)[0] for entry_id in ENTRY_IDS}
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = {e["id"]: e for category in sorted(categories) for e in load_dataset_entry(category)}
    return {entry_id: loaded[entry_id] for entry_id in ENTRY_IDS}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_later_prompt_equals_the_official_harness(kind, official_entries):
    entries = [entry_by_id(entry_id) for entry_id in ENTRY_IDS]
    scripts = {entry.id: _script(entry, kind) for entry in entries}
    policy = _ScriptedPolicy(scripts)
    records = run_episodes([BfclEpisode(entry, EnvironmentConfig.evaluation()) for entry in entries], policy)
    for entry, record in zip(entries, records):
        official_prompts, official_steps = _official_run(official_entries[entry.id], scripts[entry.id])
        ours = policy.prompts[entry.id]
        assert len(ours) == len(official_prompts), (entry.id, len(ours), len(official_prompts))
        for step, (mine, theirs) in enumerate(zip(ours, official_prompts)):
            assert mine == theirs, (entry.id, step, _first_difference(mine, theirs))
        if official_steps is None:
            assert record.inference_error and not record.outcome.correct, entry.id
        else:
            assert not record.inference_error and record.steps == official_steps, entry.id
    broke = sum(bool(record.inference_error) for record in records)
    assert (broke == len(records)) if kind in BREAKS_HISTORY else (broke == 0), (kind, broke)


def _first_difference(a: str, b: str) -> str:
    index = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"at {index}: ours {a[index - 80 : index + 80]!r} / official {b[index - 80 : index + 80]!r}"


def test_an_inference_error_is_written_and_resumed_as_the_official_result(tmp_path):
    from envtune_jax.environments import eval_report

    entry = entry_by_id("multi_turn_base_3")
    policy = _ScriptedPolicy({entry.id: _script(entry, "not_an_object")})
    (record,) = run_episodes([BfclEpisode(entry, EnvironmentConfig.evaluation())], policy)
    assert record.inference_error and record.outcome.counters["inference_error"] == 1
    assert record.outcome.progress_reward == record.outcome.reward == 0.0
    progress = eval_report.EvalProgress(tmp_path, {"run": 1})
    progress.add(record)
    assert eval_report.EvalProgress(tmp_path, {"run": 1}).done[entry.id] == record
    paths = eval_report.write_results(tmp_path, eval_report.category_table([record]), [record], {})
    (line,) = paths["layout"].read_text().splitlines()
    assert json.loads(line)["result"] == "Error during inference: " + record.inference_error
    # A replay of that file scores the entry as the official evaluation does: wrong.
    recorded = eval_report.load_recorded_outputs([paths["layout"]])
    assert recorded[entry.id] == []
