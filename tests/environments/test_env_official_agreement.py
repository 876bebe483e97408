"""Verdicts and decoding agree with the official BFCL evaluation (used here as the oracle).

Recorded outputs (per entry, per turn, per step, raw text) are built from mutated ground-truth call lists
(dropped, duplicated, reordered, wrong-argument, extra read-only, unknown-tool, split across steps, empty
turns, withheld tools called early, odd step texts), then scored twice: by our replay evaluation, and by
the official pipeline (QwenFCHandler.decode_execute + multi_turn_checker, with the force-termination
length check of eval_runner). The official executor evals strings; it only sees strings made here from
trusted ground-truth literals.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random

import pytest

from envtune_jax.environments.base import ToolCall
from envtune_jax.environments.bfcl_data import BfclEntry, load_entries
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.evaluation import evaluate_bfcl
from envtune_jax.environments.gt_calls import ground_truth_tool_calls
from envtune_jax.environments.policies import ReplayPolicy
from envtune_jax.environments.protocol import decode_official_step, render_calls

checker = pytest.importorskip("bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker")
qwen_fc = pytest.importorskip("bfcl_eval.model_handler.local_inference.qwen_fc")
from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import is_empty_execute_response  # noqa: E402

READ_ONLY_CALLS = {
    "GorillaFileSystem": ToolCall("pwd", {}),
    "MathAPI": ToolCall("add", {"a": 1, "b": 2}),
    "MessageAPI": ToolCall("list_users", {}),
    "TwitterAPI": ToolCall("posting_get_login_status", {}),
    "TicketAPI": ToolCall("ticket_get_login_status", {}),
    "TradingBot": ToolCall("trading_get_login_status", {}),
    "TravelAPI": ToolCall("list_all_airports", {}),
    "VehicleControlAPI": ToolCall("displayCarStatus", {"option": "fuel"}),
}
MUTATIONS = (
    "identity",
    "drop",
    "duplicate",
    "reorder",
    "wrong_argument",
    "extra_read_only",
    "split_steps",
    "empty_turn",
    "unknown_tool",
    "withheld_early",
    "odd_texts",
    "missing_turn",
)
_HANDLER = object.__new__(qwen_fc.QwenFCHandler)  # decode_execute needs no handler state
_model_counter = itertools.count()


def _official_call_string(call: ToolCall) -> str:
    return f"{call.name}({','.join(f'{k}={v!r}' for k, v in call.arguments.items())})"


def _changed_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value[1:] if value else ["x"]
    return {}


def _mutated_recording(entry: BfclEntry, mutation: str, rng: random.Random) -> list[list[str]]:
    """Per turn, per step texts: the ground truth with one mutation applied."""
    turns = [ground_truth_tool_calls(calls, entry.involved_classes) for calls in entry.ground_truth]
    with_calls = [t for t, calls in enumerate(turns) if calls]
    target = rng.choice(with_calls)
    calls = turns[target]
    split = False
    odd_steps: list[str] = []
    if mutation == "drop":
        calls.pop(rng.randrange(len(calls)))
    elif mutation == "duplicate":
        index = rng.randrange(len(calls))
        calls.insert(index + 1, calls[index])
    elif mutation == "reorder":
        calls.reverse()
    elif mutation == "wrong_argument":
        candidates = [c for c in calls if c.arguments]
        if candidates:
            call = rng.choice(candidates)
            key = rng.choice(sorted(call.arguments))
            calls[calls.index(call)] = ToolCall(call.name, {**call.arguments, key: _changed_value(call.arguments[key])})
    elif mutation == "extra_read_only":
        calls.insert(rng.randrange(len(calls) + 1), READ_ONLY_CALLS[rng.choice(entry.involved_classes)])
    elif mutation == "split_steps":
        split = True
    elif mutation == "empty_turn":
        calls.clear()
    elif mutation == "unknown_tool":
        calls.insert(rng.randrange(len(calls) + 1), ToolCall("not_a_tool", {"x": 1}))
    elif mutation == "withheld_early" and entry.missed_function:
        withheld_turn, names = next(iter(sorted(entry.missed_function.items())))
        early = turns[0] if withheld_turn > 0 else calls
        source = next((c for t in turns for c in t if c.name == names[0]), ToolCall(names[0], {}))
        early.append(source)
    elif mutation == "odd_texts":
        good = render_calls(calls[:1])
        odd_steps = [
            '<tool_call>\n{"name": "pwd", "arguments": {}\n</tool_call>\n' + good,  # one bad JSON block
            "<tool_call>\n[1, 2]\n</tool_call>\n" + good,  # a non-object: the whole step is dropped
            '<tool_call>\n{"name": "pwd"}\n</tool_call>',  # no arguments: dropped
            "<tool_call>" + good.removeprefix("<tool_call>\n"),  # no newline after the tag: not a block
            '<tool_call>\n{"name": "%s", "arguments": %s}\n</tool_call>'
            % (calls[0].name, json.dumps(json.dumps(calls[0].arguments))),  # arguments as a JSON string
        ]
        rng.shuffle(odd_steps)
    recording = []
    for t, turn_calls in enumerate(turns):
        if split and t == target:
            steps = [render_calls([c]) for c in turn_calls]
        else:
            steps = [render_calls(turn_calls)] if turn_calls else []
        if t == target:
            steps = odd_steps + steps
        recording.append(steps + ["Done."])
    if mutation == "missing_turn":
        recording.pop()
    return recording


def _official_verdict(entry: BfclEntry, recording: list[list[str]]) -> bool:
    if len(recording) != len(entry.ground_truth):
        return False  # eval_runner: force-terminated
    decoded = []
    for turn in recording:
        steps = []
        for text in turn:
            try:
                calls = _HANDLER.decode_execute(text, has_tool_call_tag=False)
            except Exception:
                continue
            if not is_empty_execute_response(calls):
                steps.append(calls)
        decoded.append(steps)
    result = checker.multi_turn_checker(
        decoded, entry.ground_truth, dataclasses.asdict(entry), entry.category, f"agreement{next(_model_counter)}"
    )
    return result["valid"]


def _sample_entries(stride: int) -> list[BfclEntry]:
    return load_entries()[::stride]


def test_replay_verdicts_match_official_checker_on_mutated_recordings():
    entries = _sample_entries(stride=9)
    rng = random.Random(1234)
    cases = [(entry, mutation, _mutated_recording(entry, mutation, rng)) for entry in entries for mutation in MUTATIONS]
    ours_by_case = []
    for mutation in MUTATIONS:  # one replay run per mutation kind (ids must be unique within a run)
        batch = [(entry, recording) for entry, m, recording in cases if m == mutation]
        recorded = {entry.id: recording for entry, recording in batch}
        records = evaluate_bfcl(
            [entry for entry, _ in batch], ReplayPolicy(recorded), EnvironmentConfig.replay(), keep_history=False
        )
        for (entry, recording), record in zip(batch, records):
            ours_by_case.append((entry.id, mutation, record.outcome.correct, _official_verdict(entry, recording)))
    disagreements = [case for case in ours_by_case if case[2] != case[3]]
    assert not disagreements, disagreements[:10]
    # The mutations must exercise both verdicts, or the test proves nothing.
    verdicts = {(m, ours) for _, m, ours, _ in ours_by_case}
    assert ("identity", True) in verdicts and ("drop", False) in verdicts and ("duplicate", False) in verdicts
    assert ("extra_read_only", True) in verdicts and ("split_steps", True) in verdicts
    assert ("missing_turn", False) in verdicts and ("wrong_argument", False) in verdicts


ODD_TEXTS = [
    "",
    "I have finished.",
    '<tool_call>\n{"name": "ls", "arguments": {"a": true}}\n</tool_call>',
    '<tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call>\n'
    '<tool_call>\n{"name": "pwd", "arguments": {}}\n</tool_call>',
    '<tool_call>{"name": "ls", "arguments": {}}</tool_call>',
    '<tool_call>\n{"name": "ls", "arguments": {}}</tool_call>\n'
    '<tool_call>\n{"name": "pwd", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "ls", "arguments": "{\\"a\\": false}"}\n</tool_call>',
    '<tool_call>\n{"name": "ls", "arguments": "[1]"}\n</tool_call>',
    '<tool_call>\n{"name": "ls", "arguments": [1]}\n</tool_call>',
    '<tool_call>\n{"name": ["ls"], "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": 7, "arguments": {"x": 1.5}}\n</tool_call>',
    '<tool_call>\n{"name": "cd", "arguments": {"folder": "a\\nb", "n": null, "l": [1, {"k": "v"}]}}\n</tool_call>',
    '<tool_call>\n"just a string"\n</tool_call>',
    '<tool_call>\n{"name": "ls", "arguments": {}} trailing\n</tool_call>\n'
    '<tool_call>\n{"name": "pwd", "arguments": {}}\n</tool_call>',
    'text first\n<tool_call>\n{"arguments": {}, "name": "mv", "extra": 1}\n</tool_call> and after',
]


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_step_decoding_matches_official_decode_execute(text):
    try:
        official = _HANDLER.decode_execute(text, has_tool_call_tag=False)
    except Exception:
        official = None
    ours = decode_official_step(text)
    assert (None if ours is None else [_official_call_string(c) for c in ours]) == official


def test_chat_parser_and_official_decoding_agree_on_well_formed_calls():
    """The training parser (chat package) reads the oracle's text exactly as the evaluation decoder does."""
    from envtune_jax.chat.parse import parse_tool_calls

    for entry in _sample_entries(stride=7):
        for turn in entry.ground_truth:
            calls = ground_truth_tool_calls(turn, entry.involved_classes)
            text = render_calls(calls)
            parsed = parse_tool_calls(text, None, "qwen_fc")
            assert not parsed.errors
            assert [(c.name, c.arguments) for c in parsed.calls] == [
                (c.name, c.arguments) for c in decode_official_step(text)
            ]
            assert decode_official_step(text) == calls
