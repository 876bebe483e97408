"""Policies for evaluation: given conversation states, return the next assistant step of each.

`Policy.act` is batched (a model-backed policy generates for many episodes at once). A policy returns,
per state, a `PolicyStep` (the whole generated text; its visible part, after any </think>, is what the
official result layout records and what is decoded; the history keeps what the official harness keeps
of the whole text), None to stop that episode (it is truncated and scored as a force-quit), or
`STEP_PENDING`: the step is still being generated and the driver asks again with the same state in its
next round (a policy that streams steps lets the episodes whose step ended move on meanwhile).
Built in: the oracle (plays the ground truth through the text protocol), do-nothing, and replay of
recorded outputs. A model-backed policy is built by the generation engine through
`build_model_policy` (entry point `MODEL_POLICY_ENTRY_POINT`).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Protocol, Sequence

from environments.base import ToolCall
from environments.bfcl_data import BfclEntry
from environments.gt_calls import ground_truth_tool_calls
from environments.protocol import decode_official_step, render_calls
from environments.synthetic import SyntheticTask
from envtune_jax.chat.official_decode import split_reasoning

ORACLE_REPLY = "Done."
MODEL_POLICY_ENTRY_POINT = "rl.model_policy:build_model_policy"


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


class StepPending:
    """The type of STEP_PENDING: this episode's step is not finished yet; ask again with the same state."""

    def __repr__(self) -> str:
        return "STEP_PENDING"


STEP_PENDING = StepPending()


class Policy(Protocol):
    name: str

    def act(self, states: Sequence[PolicyState]) -> list[PolicyStep | StepPending | None]: ...


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


class ModelPolicyUnavailableError(RuntimeError):
    """No generation engine is wired in to build a model-backed policy."""


def build_model_policy(*, ckpt: str | None = None, hf_dir: str | None = None, **options: Any) -> Policy:
    """A model-backed policy from a checkpoint or an HF directory, built by the generation engine.

    The engine plugs in by providing `build_model_policy(ckpt=..., hf_dir=..., **options) -> Policy`
    at MODEL_POLICY_ENTRY_POINT (module:function).
    """
    module_name, function_name = MODEL_POLICY_ENTRY_POINT.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ModelPolicyUnavailableError(
                f"evaluating a model needs the generation engine, which is not wired in yet: expected "
                f"`{function_name}(ckpt=..., hf_dir=..., **options)` returning an environments.policies.Policy "
                f"in module `{module_name}`. Use --policy oracle or --replay FILE meanwhile."
            ) from exc
        raise
    factory = getattr(module, function_name, None)
    if factory is None:
        raise ModelPolicyUnavailableError(f"module `{module_name}` has no `{function_name}` function")
    return factory(ckpt=ckpt, hf_dir=hf_dir, **options)
