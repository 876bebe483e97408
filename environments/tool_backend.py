"""The API state of one BFCL episode: the agent's instances, the ground-truth twin, and calls on them.

A `ToolBackend` is everything that has to live where tool calls run. It holds the agent's instances of
the involved API classes and a twin loaded from the same initial config, each behind a SafeExecutor, and
answers three requests: offer more tools, execute the agent's calls, and close a turn (run its
ground-truth calls on the twin and apply the official state check). It is deterministic: the same
requests in the same order give the same answers, which is what lets the tool process rebuild it
(`environments.tool_host`). BfclEpisode keeps everything else (protocol, hints, rewards).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from environments.executor import CallGuard, ExecutedCall, SafeExecutor, create_instances, no_guard
from environments.gt_calls import GroundTruthCall


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """What a backend is built from (picklable): the entry's classes and initial state, the tools offered
    from the start, and the tools callable without being offered (official name resolution)."""

    involved_classes: tuple[str, ...]
    initial_config: Mapping[str, Any]
    long_context: bool
    tool_docs: tuple[Mapping[str, Any], ...]
    unoffered_names: tuple[str, ...] = ()


def states_match(agent_instances: Mapping[str, Any], truth_instances: Mapping[str, Any]) -> bool:
    """Official state check: every attribute not starting with "_" of each twin equals (==) the agent's."""
    for class_name, truth in truth_instances.items():
        agent = agent_instances[class_name]
        for attribute, expected in vars(truth).items():
            if not attribute.startswith("_") and getattr(agent, attribute) != expected:
                return False
    return True


class ToolBackend:
    """One episode's API instances and twin; `guard` wraps every call (agent's and ground truth's)."""

    def __init__(self, spec: BackendSpec, guard: CallGuard = no_guard):
        classes, config = list(spec.involved_classes), spec.initial_config
        self.agent = create_instances(classes, config, spec.long_context)
        self.truth = create_instances(classes, config, spec.long_context)
        self._executor = SafeExecutor(self.agent, spec.tool_docs, guard)
        self._executor.allow_unoffered(spec.unoffered_names)
        self._truth_executor = SafeExecutor(self.truth, (), guard)

    def offer(self, tool_docs: Sequence[Mapping[str, Any]]) -> None:
        self._executor.offer(tool_docs)

    def execute(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> list[ExecutedCall]:
        """The agent's calls of one step, in order: (name, arguments) each."""
        return [self._executor.execute(name, arguments) for name, arguments in calls]

    def close_turn(self, truth_calls: Sequence[GroundTruthCall]) -> tuple[list[str], bool]:
        """Runs a turn's ground-truth calls on the twin: (their result strings, whether the states match)."""
        results = [self._truth_executor.execute_positional(c.name, c.args, dict(c.kwargs)) for c in truth_calls]
        return results, states_match(self.agent, self.truth)

    def close(self) -> None:
        """Nothing to free: the state is this object's (HostedBackend frees its tool process's copy)."""
