"""Helpers shared by the chat tests (no tests here): BFCL entries, offered docs, synthetic histories."""

from __future__ import annotations

import ast
import functools
import json
import random
from pathlib import Path

import pytest

CATEGORIES = ("base", "long_context", "miss_func", "miss_param")


def bfcl_data_dir() -> Path:
    bfcl_eval = pytest.importorskip("bfcl_eval", reason="bfcl-eval is not installed (make setup installs it --no-deps)")
    return Path(bfcl_eval.__file__).parent / "data"


@functools.cache
def raw_entries(category: str) -> tuple[dict, ...]:
    path = bfcl_data_dir() / f"BFCL_v4_multi_turn_{category}.json"
    return tuple(json.loads(line) for line in path.read_text().splitlines() if line.strip())


@functools.cache
def ground_truth(category: str) -> dict[str, list]:
    path = bfcl_data_dir() / "possible_answer" / f"BFCL_v4_multi_turn_{category}.json"
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {row["id"]: row["ground_truth"] for row in rows}


@functools.cache
def _docs_of_class(class_name: str) -> tuple[dict, ...]:
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    path = bfcl_data_dir() / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]
    return tuple(json.loads(line) for line in path.read_text().splitlines() if line.strip())


def entry_docs(entry: dict) -> tuple[list[dict], dict[int, list[dict]]]:
    """(offered raw docs, {turn index: held-out raw docs}) of an entry, in the official order."""
    docs = [dict(doc) for name in entry["involved_classes"] for doc in _docs_of_class(name)]
    by_name = {doc["name"]: doc for doc in docs}
    missed = entry.get("missed_function", {})
    held_out = {int(turn): [by_name[name] for name in names] for turn, names in missed.items()}
    withheld = {doc["name"] for group in held_out.values() for doc in group}
    return [doc for doc in docs if doc["name"] not in withheld], held_out


def parse_ground_truth_call(call_text: str) -> dict:
    """'cd(folder="x")' -> {"name": "cd", "arguments": {"folder": "x"}} (positional args as arg0, arg1...)."""
    node = ast.parse(call_text, mode="eval").body
    arguments = {f"arg{i}": ast.literal_eval(arg) for i, arg in enumerate(node.args)}
    arguments.update({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords})
    return {"name": ast.unparse(node.func), "arguments": arguments}


def synthetic_history(
    entry: dict, calls_per_turn: list[list[str]], rng: random.Random, *, quirks: bool, style: str = "qwen_fc"
) -> list[tuple[str, list[dict]]]:
    """A plausible episode as ("env" | "assistant", messages) events: each turn's user message, its
    ground-truth calls split over one or two steps with made-up results, then a closing text reply.
    `quirks` adds reasoning, text next to calls, duplicate calls, wrapped calls and string arguments."""
    from envtune_jax.chat.bfcl_prompt import bfcl_turn_messages

    _, held_out = entry_docs(entry)
    events: list[tuple[str, list[dict]]] = []
    for turn_index, question in enumerate(entry["question"]):
        events.append(("env", bfcl_turn_messages(question, held_out.get(turn_index))))
        calls = [parse_ground_truth_call(text) for text in calls_per_turn[turn_index]]
        split = rng.randint(1, len(calls)) if calls else 0
        for step_calls in (calls[:split], calls[split:]):
            if not step_calls:
                continue
            message: dict = {"role": "assistant", "content": "", "tool_calls": [dict(c) for c in step_calls]}
            if quirks:
                if rng.random() < 0.3:
                    message["reasoning_content"] = rng.choice(["I should act.", "\nCheck the state first.\n"])
                if rng.random() < 0.2:
                    message["content"] = "Let me do that."
                if rng.random() < 0.2:
                    message["tool_calls"].append(dict(message["tool_calls"][0]))
                if rng.random() < 0.2:
                    message["tool_calls"][0] = {"function": message["tool_calls"][0]}
                if rng.random() < 0.1:
                    last = message["tool_calls"][-1]
                    message["tool_calls"][-1] = {"name": last.get("name", "x"), "arguments": '{"raw": true}'}
            events.append(("assistant", [message]))
            results = [
                json.dumps({"result": f"ok {i}", "note": "ünïcode ✓"}) if i % 2 else f"Done: step {i}"
                for i, _ in enumerate(message["tool_calls"])
            ]
            events.append(("env", [{"role": "tool", "name": "f", "content": result} for result in results]))
        closing: dict = {"role": "assistant", "content": f"Turn {turn_index} is complete."}
        if quirks and rng.random() < 0.3:
            closing["content"] = "<think>\nall done\n</think>\n\nTurn complete."
        if style == "paper":
            closing["reasoning_content"] = "The request is complete."
        events.append(("assistant", [closing]))
    return events
