"""The API state of one BFCL episode: the agent's instances, the ground-truth twin, and calls on them.

A `ToolBackend` is everything that has to live where tool calls run. It holds the agent's instances of
the involved API classes and a twin loaded from the same initial config, each behind a SafeExecutor, and
answers three requests: offer more tools, execute the agent's calls, and close a turn: run its
ground-truth calls on the twin and apply the official checks (state: every public attribute of every
instance equals the twin's; responses: every result string of the turn's ground-truth calls occurs among
all the agent's results so far). It is deterministic: the same requests in the same order give the same
answers, which is what lets the tool process rebuild it (`envtune_jax.environments.tool_host`). BfclEpisode keeps
everything else (protocol, hints, rewards).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

from envtune_jax.environments.bfcl_data import func_docs
from envtune_jax.environments.executor import CallGuard, ExecutedCall, SafeExecutor, create_instances, no_guard
from envtune_jax.environments.gt_calls import GroundTruthCall
from envtune_jax.environments.rewards import Verdict, responses_contained


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """What a backend is built from (small, picklable): the entry's classes and initial state, the names of
    the tools offered from the start, and of those callable without being offered (official name
    resolution). Tool docs are looked up by name where the backend lives, not shipped."""

    involved_classes: tuple[str, ...]
    initial_config: Mapping[str, Any]
    long_context: bool
    offered_names: tuple[str, ...]
    unoffered_names: tuple[str, ...] = ()


@functools.lru_cache(maxsize=None)
def _class_docs(class_name: str) -> Mapping[str, Mapping[str, Any]]:
    """Tool name -> raw doc of one API class (shared: read only)."""
    return {doc["name"]: doc for doc in func_docs(class_name)}


def tool_docs(involved_classes: Sequence[str], names: Sequence[str]) -> list[Mapping[str, Any]]:
    """The raw docs of the named tools of these classes (what the executor checks argument types with)."""
    docs: dict[str, Mapping[str, Any]] = {}
    for class_name in involved_classes:
        docs.update(_class_docs(class_name))
    missing = [name for name in names if name not in docs]
    if missing:
        raise ValueError(f"no tool docs for {missing} in {list(involved_classes)}")
    return [docs[name] for name in names]


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
        self.classes = classes
        self.agent = create_instances(classes, config, spec.long_context)
        self.truth = create_instances(classes, config, spec.long_context)
        self._executor = SafeExecutor(self.agent, tool_docs(classes, spec.offered_names), guard)
        self._executor.allow_unoffered(spec.unoffered_names)
        self._truth_executor = SafeExecutor(self.truth, (), guard)
        self.agent_results: list[str] = []  # every result string of the agent's calls, in order

    def offer(self, names: Sequence[str]) -> None:
        """Offers more tools (a miss_func hold-out turn's)."""
        self._executor.offer(tool_docs(self.classes, names))

    def execute(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> list[ExecutedCall]:
        """The agent's calls of one step, in order: (name, arguments) each."""
        executed = [self._executor.execute(name, arguments) for name, arguments in calls]
        self.agent_results.extend(call.result for call in executed)
        return executed

    def close_turn(self, truth_calls: Sequence[GroundTruthCall]) -> Verdict:
        """Runs a turn's ground-truth calls on the twin and applies the official checks."""
        truth_results = [self._truth_executor.execute_positional(c.name, c.args, dict(c.kwargs)) for c in truth_calls]
        return states_match(self.agent, self.truth), responses_contained(truth_results, self.agent_results)

    def close(self) -> None:
        """Nothing to free: the state is this object's (HostedBackend frees its tool process's copy)."""
