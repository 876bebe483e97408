"""Policies for evaluation: given conversation states, return the next assistant step of each.

`Policy.act` is batched: it answers every state it is given, round by round (`evaluation.run_episodes`
asks for one step of each episode in play). A policy returns, per state, a `PolicyStep` (the whole
generated text; its visible part, after any </think>, is what the official result layout records and what
is decoded; the history keeps what the official harness keeps of the whole text) or None to stop that
episode (it is truncated and scored as a force-quit).
Built in: the oracle (plays the ground truth through the text protocol), do-nothing, and replay of
recorded outputs. A model is not a `Policy` but an `evaluation.EpisodePlayer`, which schedules the episodes
itself on the generation engine; the caller (the command line, the trainer) builds it and passes it in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence

from envtune_jax.chat.official_decode import split_reasoning
from envtune_jax.environments.base import ToolCall
from envtune_jax.environments.bfcl_data import BfclEntry
from envtune_jax.environments.gt_calls import ground_truth_tool_calls
from envtune_jax.environments.protocol import decode_official_step, render_calls
from envtune_jax.environments.synthetic import SyntheticTask

ORACLE_REPLY = "Done."


@dataclasses.dataclass(frozen=True)
class PolicyState:
    episode_id: str
    turn: int
    step: int  # steps already taken in this turn
    messages: list[dict[str, Any]]  # the conversation so far (user / assistant / tool), no system message
    tools: list[dict[str, Any]]  # tool docs for the system prompt
    call_syntax: str


@dataclasses.dataclass(frozen=True)
class PolicyStep:
    output: str  # the step's whole generated text, reasoning included (stop tokens excluded)

    @property
    def text(self) -> str:
        """The visible text (after the last </think>): what is decoded and recorded."""
        return split_reasoning(self.output)[1]

    @property
    def reasoning(self) -> str:
        return split_reasoning(self.output)[0]


class Policy(Protocol):
    name: str

    def act(self, states: Sequence[PolicyState]) -> list[PolicyStep | None]: ...


class DoNothingPolicy:
    """Replies with empty text at every step: every turn ends without a call (scores 0 on BFCL)."""

    name = "do-nothing"

    def act(self, states: Sequence[PolicyState]) -> list[PolicyStep | None]:
        return [PolicyStep("") for _ in states]


class OraclePolicy:
    """Writes each turn's ground-truth calls as text in the first step, then a plain reply."""

    name = "oracle"

    def __init__(self, expected_calls: Callable[[str, int], list[ToolCall]]):
        self._expected_calls = expected_calls

    @classmethod
    def for_bfcl(cls, entries: Sequence[BfclEntry]) -> "OraclePolicy":
        by_id = {entry.id: entry for entry in entries}
        return cls(_BfclTruth(by_id))

    @classmethod
    def for_synthetic(cls, tasks: Sequence[SyntheticTask]) -> "OraclePolicy":
        return cls(_SyntheticTruth({task.id: task for task in tasks}))

    def act(self, states: Sequence[PolicyState]) -> list[PolicyStep | None]:
        steps = []
        for state in states:
            calls = self._expected_calls(state.episode_id, state.turn) if state.step == 0 else []
            steps.append(PolicyStep(render_calls(calls, state.call_syntax) if calls else ORACLE_REPLY))
        return steps


@dataclasses.dataclass(frozen=True)
class _BfclTruth:
    """Picklable lookup of an entry's ground-truth calls (named arguments) per turn."""

    entries: Mapping[str, BfclEntry]

    def __call__(self, episode_id: str, turn: int) -> list[ToolCall]:
        entry = self.entries[episode_id]
        return ground_truth_tool_calls(entry.ground_truth[turn], entry.involved_classes)


@dataclasses.dataclass(frozen=True)
class _SyntheticTruth:
    tasks: Mapping[str, SyntheticTask]

    def __call__(self, episode_id: str, turn: int) -> list[ToolCall]:
        requested = self.tasks[episode_id].turns[turn]
        return [] if requested is None else [ToolCall(requested[0], {"value": requested[1]})]


class ReplayPolicy:
    """Plays recorded outputs (official layout: per entry, per turn, per step, the raw text).

    As the official evaluation does, steps that do not decode to at least one call are dropped and each
    recorded turn then ends; an entry whose recording runs out of turns is stopped (force-terminated).
    """

    name = "replay"

    def __init__(self, recorded: Mapping[str, Sequence[Sequence[str]]]):
        self.recorded = {
            entry_id: [[text for text in turn if decode_official_step(text)] for turn in turns]
            for entry_id, turns in recorded.items()
        }
        self.recorded_turn_counts = {entry_id: len(turns) for entry_id, turns in recorded.items()}

    def act(self, states: Sequence[PolicyState]) -> list[PolicyStep | None]:
        steps: list[PolicyStep | None] = []
        for state in states:
            turns = self.recorded.get(state.episode_id, [])
            if state.turn >= len(turns):
                steps.append(None)
                continue
            turn = turns[state.turn]
            steps.append(PolicyStep(turn[state.step] if state.step < len(turn) else ""))
        return steps
