"""A tiny multi-turn tool task that a small randomly initialised model can learn with GRPO on CPU.

The agent controls a few devices. Each turn the user asks for one setting ("Set the light to red.");
the expected answer is one call of that device's tool with that value, then a reply that is not a call
(which ends the turn, as in BFCL). Optional chat turns ("Thanks, that is all.") expect no call.

Text protocol (`call_syntax = "compact"`, parsed by `parse_compact_calls`): a step whose stripped text
is exactly two words `<tool> <value>` with a known tool name is one call `tool(value=...)`; a step
whose first word is a tool name but has another word count is a format error (no call); any other text
(including "") is a plain reply. With the default devices every call is two Qwen tokens
("light" + " red"), so an episode of T turns is won by 3 tokens per turn: `light red<|im_end|>` then
`<|im_end|>` (an empty reply).

What earns reward (the BFCL machinery, `TurnBasedEpisode`): r_t = 1 iff the turn made a call, every
device equals the ground-truth twin after the turn, and the twin's result string for the requested
call (`{"light": "red"}`) is among the agent's results so far; chat turns score 1 for a reply without a
call. R_P = mean over all T turns. A uniformly random model over the Qwen vocabulary scores ~0.
Hints (config.hints) name the constraint without the answer: wrong device, value not as requested,
value outside the allowed list (the list is in the tool's description).
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any, Literal, Sequence

from envtune_jax.environments.base import ToolCall
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.episode_core import TurnBasedEpisode
from envtune_jax.environments.executor import EXECUTION_ERROR_PREFIX, ExecutedCall
from envtune_jax.environments.rewards import responses_contained
from envtune_jax.untrusted_text import echo

DEFAULT_DEVICES = (("light", ("red", "green", "blue")), ("fan", ("low", "high")), ("door", ("open", "close")))
CHAT_TURN_TEXT = "Thanks, that is all for now."
INITIAL_SETTING = "off"
DOC_STYLES = ("schema", "short", "system", "none")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    devices: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_DEVICES
    num_turns: int = 2
    chat_turn_probability: float = 0.0  # chance that a turn (not the first) expects no call
    # How the devices are described (prompt lengths with the 3 default devices, "qwen_fc" chat style):
    # "schema": BFCL-style docs with a JSON-schema `value` parameter in the tools block (~260 tokens);
    # "short": name + one-line description in the tools block (~155 tokens);
    # "system": no tools block, one system line listing devices, values and the call syntax (~45 tokens);
    # "none": only the user's request (~14 tokens); the devices and the syntax must be learned.
    doc_style: Literal["schema", "short", "system", "none"] = "schema"

    def __post_init__(self) -> None:
        if self.doc_style not in DOC_STYLES:
            raise ValueError(f"doc_style must be one of {DOC_STYLES}, got {self.doc_style!r}")
        if not 2 <= len(self.devices) <= 8:
            raise ValueError(f"use 2..8 devices, got {len(self.devices)}")
        if self.num_turns < 1:
            raise ValueError(f"num_turns must be >= 1, got {self.num_turns}")
        for name, values in self.devices:
            if not name.isidentifier() or not values or any(not v.isalpha() for v in values):
                raise ValueError(f"device {name!r}: name must be an identifier and values single words, got {values}")


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """turns[t] = (tool, value) requested in turn t, or None for a chat turn (no call expected)."""

    id: str
    turns: tuple[tuple[str, str] | None, ...]


def make_synthetic_tasks(count: int, config: SyntheticConfig = SyntheticConfig(), seed: int = 0) -> list[SyntheticTask]:
    """`count` tasks drawn deterministically from `seed`."""
    rng = random.Random(seed)
    tasks = []
    for index in range(count):
        turns: list[tuple[str, str] | None] = []
        for turn in range(config.num_turns):
            if turn > 0 and rng.random() < config.chat_turn_probability:
                turns.append(None)
                continue
            name, values = config.devices[rng.randrange(len(config.devices))]
            turns.append((name, values[rng.randrange(len(values))]))
        tasks.append(SyntheticTask(id=f"synthetic_{seed}_{index}", turns=tuple(turns)))
    return tasks


def tool_docs(config: SyntheticConfig) -> list[dict[str, Any]]:
    """The tools block of the prompt (empty for doc_styles "system" and "none"); "schema" and "short" list
    the allowed values."""
    if config.doc_style in ("system", "none"):
        return []
    if config.doc_style == "short":
        return [
            {"name": name, "description": f"Sets the {name}: {', '.join(values)}."} for name, values in config.devices
        ]
    return [
        {
            "name": name,
            "description": f"Sets the {name}.",
            "parameters": {
                "type": "dict",
                "properties": {"value": {"type": "string", "description": f"One of: {', '.join(values)}"}},
                "required": ["value"],
            },
        }
        for name, values in config.devices
    ]


def system_line(config: SyntheticConfig) -> str:
    """The system message of doc_style "system": every device with its values, and the call syntax."""
    devices = "; ".join(f"{name} ({', '.join(values)})" for name, values in config.devices)
    return f"Devices: {devices}. To set one, reply '<device> <value>'."


def parse_compact_calls(text: str, tool_names: Sequence[str]) -> tuple[list[ToolCall], list[str]]:
    """(calls, format errors) of one step in the compact syntax (see module docstring)."""
    words = text.split()
    if not words or words[0] not in tool_names:
        return [], []
    if len(words) != 2:
        return [], [f"a call is written '<tool> <value>' (two words), got {text.strip()!r}"]
    return [ToolCall(words[0], {"value": words[1]})], []


def user_request(tool: str, value: str) -> str:
    return f"Set the {tool} to {value}."


class SyntheticEpisode(TurnBasedEpisode):
    call_syntax = "compact"

    def __init__(
        self,
        task: SyntheticTask,
        config: SyntheticConfig = SyntheticConfig(),
        env_config: EnvironmentConfig | None = None,
    ):
        super().__init__(env_config or EnvironmentConfig.training(augmented=False))
        self.task, self.task_config = task, config
        self._allowed = {name: values for name, values in config.devices}
        for requested in task.turns:
            if requested is not None and requested[1] not in self._allowed.get(requested[0], ()):
                raise ValueError(f"task {task.id}: {requested} is not a device setting of the config")

    @property
    def episode_id(self) -> str:
        return self.task.id

    @property
    def category(self) -> str:
        return "synthetic"

    @property
    def num_turns(self) -> int:
        return len(self.task.turns)

    def tools(self) -> list[dict[str, Any]]:
        return tool_docs(self.task_config)

    def offered_tool_names(self) -> frozenset[str]:
        return frozenset(self._allowed)

    def parse_step(self, text: str, style: str) -> tuple[list[ToolCall], list[str]]:
        """The compact syntax, whatever the chat style."""
        return parse_compact_calls(text, sorted(self.offered_tool_names()))

    def decode_step(self, text: str) -> tuple[list[ToolCall], list[str]]:
        return parse_compact_calls(text, sorted(self.offered_tool_names()))

    def _start(self) -> None:
        self._agent_state = {name: INITIAL_SETTING for name in self._allowed}
        self._truth_state = dict(self._agent_state)
        self._agent_results: list[str] = []

    def _opening_messages(self, turn: int) -> list[dict[str, Any]]:
        requested = self.task.turns[turn]
        user = {"role": "user", "content": CHAT_TURN_TEXT if requested is None else user_request(*requested)}
        if turn == 0 and self.task_config.doc_style == "system":
            return [{"role": "system", "content": system_line(self.task_config)}, user]
        return [user]

    def _expects_calls(self, turn: int) -> bool:
        return self.task.turns[turn] is not None

    def _apply(self, state: dict[str, str], name: str, arguments: Any) -> tuple[str, bool, bool]:
        """(result string, valid call, reported error) of one call on `state`."""
        if name not in self._allowed:
            return f"{EXECUTION_ERROR_PREFIX}name '{echo(name)}' is not defined", False, True
        value = arguments.get("value") if isinstance(arguments, dict) and set(arguments) == {"value"} else None
        if not isinstance(value, str):
            return json.dumps({"error": f"{name} takes exactly one argument, 'value'"}), False, True
        if value not in self._allowed[name]:
            return json.dumps({"error": f"'{value}' is not a {name} setting"}), True, True
        state[name] = value
        return json.dumps({name: value}), True, False

    def _execute(self, calls) -> list[ExecutedCall]:
        executed = []
        for call in calls:
            arguments = dict(call.arguments) if isinstance(call.arguments, dict) else {}
            result, valid, error = self._apply(self._agent_state, call.name, arguments)
            self._agent_results.append(result)
            executed.append(ExecutedCall(call.name, arguments, result, valid, error and not valid, error and valid))
        return executed

    def _hint(self, executed: ExecutedCall) -> str | None:
        requested = self.task.turns[self._turn]
        if executed.name not in self._allowed:
            return f"Hint: the available tools are {', '.join(self._allowed)}."
        if requested is None:
            return "Hint: this message does not ask for a device change; reply without calling a tool."
        if executed.name != requested[0]:
            return f"Hint: the user did not ask about the {executed.name}; re-read which device they named."
        if executed.reported_error:
            return f"Hint: the {executed.name} accepts only the values listed in its description."
        if executed.arguments.get("value") != requested[1]:
            return f"Hint: the {executed.name} was set, but not to the value the user asked for."
        return None

    def _close_turn(self, turn: int) -> tuple[bool, bool]:
        requested = self.task.turns[turn]
        if requested is None:
            return True, True
        truth_result, _, _ = self._apply(self._truth_state, requested[0], {"value": requested[1]})
        return self._agent_state == self._truth_state, responses_contained([truth_result], self._agent_results)
