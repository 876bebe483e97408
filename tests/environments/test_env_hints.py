"""Hints: every family fires on the failures it targets, and no hint leaks a ground-truth value.

A noisy agent plays every entry: before each turn's ground-truth calls it makes failing calls of the
kinds the hint families target (paths instead of names, names with forbidden characters, nested cd,
folders as files, rmdir of non-empty folders, unknown airport codes and currencies, city names as
zipcodes, the broken weather service, engine start without its preconditions, actions without a login,
unknown tools). A leak is a ground-truth argument value that appears in a hint but nowhere in the
conversation so far (tool docs, messages, this step's call, the official result the hint is attached to).
"""

from __future__ import annotations

import collections
import json
import re

from envtune_jax.environments.base import ToolCall
from envtune_jax.environments.bfcl_data import entry_by_id, load_entries
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.gt_calls import ground_truth_tool_calls, parse_ground_truth_call
from envtune_jax.environments.hints import FORBIDDEN_NAME_CHARACTERS, HINT_PREFIX
from envtune_jax.environments.protocol import render_calls

FS_NAME_ARGUMENTS = ("file_name", "dir_name", "source", "destination", "file_name1", "file_name2")
FAMILY_MARKERS = {
    "fs_path": "paths are not accepted",
    "fs_cd": "one folder level per call",
    "fs_directory": "is a folder, not a file",
    "fs_missing": "not in the current directory",
    "fs_forbidden": "names cannot contain",
    "fs_rmdir": "rmdir only removes empty folders",
    "airport": "3-letter codes",
    "currency": "only between USD",
    "zipcode": "takes zipcodes",
    "weather": "weather service is unavailable",
    "engine": "before starting the engine",
    "login": "logged-in session",
    "unknown_tool": "not one of the available tools",
}


def _noisy_calls(truth: list[ToolCall], involved: list[str]) -> list[ToolCall]:
    noisy: list[ToolCall] = [ToolCall("zz_no_such_tool", {})]
    for call in truth:
        args = call.arguments
        for key in FS_NAME_ARGUMENTS:
            if isinstance(args.get(key), str):
                noisy.append(ToolCall(call.name, {**args, key: "zz_dir/" + args[key]}))
                noisy.append(ToolCall(call.name, {**args, key: "zz_missing_" + args[key]}))
                noisy.append(ToolCall(call.name, {**args, key: "zz?" + args[key]}))
        if call.name == "cd":
            noisy.append(ToolCall("cd", {"folder": "zz_a/zz_b"}))
            noisy.append(ToolCall("cat", {"file_name": args["folder"]}))
            noisy.append(ToolCall("rmdir", {"dir_name": args["folder"]}))
        if "travel_from" in args:
            noisy.append(ToolCall(call.name, {**args, "travel_from": "ZZZ"}))
        if call.name == "compute_exchange_rate":
            noisy.append(ToolCall(call.name, {**args, "base_currency": "ZZZ"}))
        if call.name == "book_flight":
            noisy.append(ToolCall(call.name, {**args, "access_token": "zz_token"}))
        if call.name == "estimate_distance":
            noisy.append(ToolCall(call.name, {"cityA": "Zzville", "cityB": "Zztown"}))
    if "VehicleControlAPI" in involved:
        noisy += [
            ToolCall("get_outside_temperature_from_weather_com", {}),
            ToolCall("startEngine", {"ignitionMode": "START"}),
        ]
    if "TwitterAPI" in involved:
        noisy.append(ToolCall("list_all_following", {}))
    if "TradingBot" in involved:
        noisy.append(ToolCall("get_order_history", {}))
    return noisy


def _truth_values(entry) -> set[str]:
    values: set[str] = set()

    def collect(value):
        if isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)
        elif not isinstance(value, bool) and value is not None and len(str(value)) >= 3:
            values.add(str(value))

    for turn in entry.ground_truth:
        for source in turn:
            parsed = parse_ground_truth_call(source)
            collect(list(parsed.args) + [v for _, v in parsed.kwargs])
    return values


def _leaks(hint: str, truth_values: set[str], conversation: str) -> list[str]:
    return [v for v in truth_values if re.search(rf"(?<!\w){re.escape(v)}(?!\w)", hint) and v not in conversation]


def test_hints_fire_for_every_family_and_never_leak_ground_truth():
    config = EnvironmentConfig.training(augmented=True)
    config.max_steps_per_turn = 10
    families = collections.Counter()
    leaks = []
    for entry in load_entries():
        env = BfclEpisode(entry, config)
        conversation = json.dumps(env.tools()) + "".join(m["content"] for m in env.reset())
        truth_values = _truth_values(entry)
        for turn in range(entry.num_turns):
            truth = ground_truth_tool_calls(entry.ground_truth[turn], entry.involved_classes)
            steps = [[c] for c in _noisy_calls(truth, entry.involved_classes)][:8] if truth else []
            for calls in steps + [truth] if truth else [[]]:
                if env.done:
                    break
                text = render_calls(calls)
                conversation += text
                result = env.step(text, calls, [])
                for message in result.messages:
                    content = message["content"]
                    official, _, hint = content.partition("\n" + HINT_PREFIX)
                    conversation += official
                    if hint:
                        families.update(name for name, marker in FAMILY_MARKERS.items() if marker in hint)
                        leaks += [(entry.id, hint, v) for v in _leaks(hint, truth_values, conversation)]
                    conversation += content
            if not env.done and truth:
                result = env.step("Done.", [], [])
                conversation += "".join(m["content"] for m in result.messages)
    assert not leaks, leaks[:5]
    missing = [name for name in FAMILY_MARKERS if families[name] == 0]
    assert not missing, (missing, families)


def test_hints_are_appended_to_the_official_result_not_replacing_it():
    entry = next(e for e in load_entries(["multi_turn_base"]) if "GorillaFileSystem" in e.involved_classes)
    plain = BfclEpisode(entry, EnvironmentConfig.training(augmented=False))
    hinted = BfclEpisode(entry, EnvironmentConfig.training(augmented=True))
    plain.reset(), hinted.reset()
    call = [ToolCall("cat", {"file_name": "zz/none.txt"})]
    official = plain.step("", call, []).messages[0]["content"]
    augmented = hinted.step("", call, []).messages[0]["content"]
    assert augmented.startswith(official + "\n" + HINT_PREFIX)
    assert hinted.agent_results() == plain.agent_results() == [official]


def test_forbidden_character_and_non_empty_rmdir_hints_quote_no_ground_truth():
    entry = entry_by_id("multi_turn_base_0")  # starts in workspace/, which holds the non-empty document/
    env = BfclEpisode(entry, EnvironmentConfig.training(augmented=True))
    conversation = json.dumps(env.tools()) + "".join(m["content"] for m in env.reset())
    cases = [
        (
            ToolCall("touch", {"file_name": "zz?notes.txt"}),
            "touch: cannot touch 'zz?notes.txt': Invalid character",
            f"names cannot contain any of the characters {FORBIDDEN_NAME_CHARACTERS}; use a plain name.",
        ),
        (
            ToolCall("mkdir", {"dir_name": "a*b"}),
            "mkdir: cannot create directory 'a*b': Invalid character",
            "names cannot contain any of the characters",
        ),
        (
            ToolCall("rmdir", {"dir_name": "document"}),
            "rmdir: cannot remove 'document': Directory not empty",
            "rmdir only removes empty folders: move or remove what is inside first.",
        ),
    ]
    for call, official_error, hint_text in cases:
        text = render_calls([call])
        conversation += text
        (message,) = env.step(text, [call], []).messages
        official, _, hint = message["content"].partition("\n" + HINT_PREFIX)
        assert official == json.dumps({"error": official_error}) and hint.startswith(hint_text)
        conversation += official
        assert not _leaks(hint, _truth_values(entry), conversation)


# Words that say how far or how much: a hint using one names a value (pressBrakePedal's doc maps "fully"
# to 1.0, the value of every ground-truth press), so it may use one only where the official result does.
DEGREE_WORDS = (
    "fully",
    "full",
    "all the way",
    "completely",
    "entirely",
    "maximum",
    "minimum",
    "halfway",
    "half",
    "100%",
)


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 1.0
    if isinstance(value, str):
        return "zz_" + value
    if isinstance(value, list):
        return value[1:] if value else ["zz"]
    return {}


def _retyped(value):
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "zz"


def _mutated_steps(truth: list[ToolCall], rng) -> list[list[ToolCall]]:
    """The turn's ground-truth calls with one call dropped, or one of its arguments changed, removed or
    given another type: one variant per call and mutation."""
    steps = []
    for index, call in enumerate(truth):
        variants: list[ToolCall | None] = [None]
        if call.arguments:
            key = rng.choice(sorted(call.arguments))
            args, value = call.arguments, call.arguments[key]
            variants += [
                ToolCall(call.name, {**args, key: _changed(value)}),
                ToolCall(call.name, {k: v for k, v in args.items() if k != key}),
                ToolCall(call.name, {**args, key: _retyped(value)}),
            ]
        for variant in variants:
            steps.append(truth[:index] + ([variant] if variant else []) + truth[index + 1 :])
    return steps


def test_hints_on_mutated_ground_truth_calls_leak_no_ground_truth_value():
    """Every hint produced while an agent plays each turn's ground-truth calls mutated (a call dropped, an
    argument with a wrong value, missing, or of a wrong type), then the ground truth, is scanned for
    ground-truth argument values the conversation has not shown, and for words saying how far or how much
    that the official result it is attached to does not say; login hints name only tools that log in."""
    import random

    config = EnvironmentConfig.training(augmented=True)
    config.max_steps_per_turn = None
    rng = random.Random(18)
    leaks, hints = [], collections.Counter()
    for entry in load_entries():
        env = BfclEpisode(entry, config)
        conversation = json.dumps(env.tools()) + "".join(m["content"] for m in env.reset())
        truth_values = _truth_values(entry)
        for turn in range(entry.num_turns):
            truth = ground_truth_tool_calls(entry.ground_truth[turn], entry.involved_classes)
            for calls in (_mutated_steps(truth, rng) + [truth] if truth else []) + [[]]:
                if env.done:
                    break
                text = render_calls(calls)
                conversation += text
                for message in env.step(text, calls, []).messages:
                    official, _, hint = message["content"].partition("\n" + HINT_PREFIX)
                    conversation += official
                    if hint:
                        hints["all"] += 1
                        hints["brake"] += "pressBrakePedal" in hint
                        hints["login"] += "logged-in session" in hint
                        leaks += [(entry.id, hint, v) for v in _leaks(hint, truth_values, conversation)]
                        leaks += [
                            (entry.id, hint, word)
                            for word in DEGREE_WORDS
                            if re.search(rf"\b{re.escape(word)}\b", hint, re.I)
                            and not re.search(rf"\b{re.escape(word)}\b", official, re.I)
                        ]
                        if "logged-in session" in hint and "get_login_status" in hint:
                            leaks.append((entry.id, hint, "a status tool named as a login tool"))
                    conversation += message["content"]
    assert not leaks, leaks[:5]
    assert hints["brake"] and hints["login"] and hints["all"] > 1000, hints


def test_brake_hint_says_fully_only_after_the_official_message_does_and_login_hints_name_login_tools():
    from envtune_jax.environments.executor import ExecutedCall
    from envtune_jax.environments.hints import HintContext, hint_for

    vehicle = HintContext({"startEngine": "VehicleControlAPI", "pressBrakePedal": "VehicleControlAPI"}, {})
    not_pressed = json.dumps({"error": "Brake pedal needs to be pressed when starting the engine."})
    not_fully = json.dumps({"error": "Must press the brake fully before starting the engine."})
    first = hint_for(ExecutedCall("startEngine", {"ignitionMode": "START"}, not_pressed, True, False, True), vehicle)
    second = hint_for(ExecutedCall("startEngine", {"ignitionMode": "START"}, not_fully, True, False, True), vehicle)
    assert "pressBrakePedal" in first and not any(word in first.lower() for word in DEGREE_WORDS)
    assert "pressBrakePedal" in second and "fully" in second
    twitter = HintContext(
        {name: "TwitterAPI" for name in ("post_tweet", "authenticate_twitter", "posting_get_login_status")}, {}
    )
    result = json.dumps({"error": "User not authenticated. Please authenticate before posting."})
    login = hint_for(ExecutedCall("post_tweet", {"content": "hi"}, result, True, False, True), twitter)
    assert "authenticate_twitter" in login and "posting_get_login_status" not in login
