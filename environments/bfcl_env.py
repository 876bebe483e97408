"""BfclEpisode: one BFCL V3 multi-turn entry as a ToolEnvironment.

Per episode: fresh API instances for the agent and a ground-truth twin (both loaded from the entry's
initial_config, long_context for that category), a safe executor whitelisting the offered tools, and the
official per-turn checks: state (every public attribute of every instance equals the twin's) and
responses (every result string of the turn's ground-truth calls occurs among all the agent's results so
far). The twin is advanced every turn whatever the agent did. Hints (config) are added on top of the
official result strings; the strings used for checking are never altered.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from environments.bfcl_data import BfclEntry, shared_offered_tool_docs
from environments.config import EnvironmentConfig
from environments.episode_core import TurnBasedEpisode
from environments.executor import ExecutedCall, SafeExecutor, create_instances
from environments.gt_calls import parse_ground_truth_call
from environments.hints import HintContext, hint_for
from environments.rewards import responses_contained

# bfcl_eval.constants.default_prompts: the user message of a miss_func hold-out turn (prompting mode,
# which the official Qwen FC handler uses: the withheld docs arrive inside it, as a Python list repr).
ADDITIONAL_FUNCTION_PROMPT = "I have updated some more functions you can choose from. What about now?"


def states_match(agent_instances: Mapping[str, Any], truth_instances: Mapping[str, Any]) -> bool:
    """Official state check: every attribute not starting with "_" of each twin equals (==) the agent's."""
    for class_name, truth in truth_instances.items():
        agent = agent_instances[class_name]
        for attribute, expected in vars(truth).items():
            if not attribute.startswith("_") and getattr(agent, attribute) != expected:
                return False
    return True


class BfclEpisode(TurnBasedEpisode):
    """One BFCL entry. Picklable, so episodes can be stepped in worker processes."""

    def __init__(self, entry: BfclEntry, config: EnvironmentConfig | None = None):
        super().__init__(config or EnvironmentConfig.evaluation())
        self.entry = entry
        self._tool_docs, self._withheld_docs = shared_offered_tool_docs(entry)  # read-only
        self._truth_calls = [[parse_ground_truth_call(s) for s in turn] for turn in entry.ground_truth]

    @property
    def episode_id(self) -> str:
        return self.entry.id

    @property
    def category(self) -> str:
        return self.entry.category

    @property
    def num_turns(self) -> int:
        return self.entry.num_turns

    def tools(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self._tool_docs)

    def offered_tool_names(self) -> frozenset[str]:
        return frozenset(self._executor.offered) if self._started else frozenset(d["name"] for d in self._tool_docs)

    def agent_results(self) -> list[str]:
        """Every result string the agent's calls produced so far (what the response check searches)."""
        return list(self._agent_results)

    def _start(self) -> None:
        entry, limit = self.entry, self.config.call_time_limit_s
        self._agent = create_instances(entry.involved_classes, entry.initial_config, entry.long_context)
        self._truth = create_instances(entry.involved_classes, entry.initial_config, entry.long_context)
        self._executor = SafeExecutor(self._agent, self._tool_docs, limit)
        if self.config.execute_withheld_tools:
            self._executor.allow_unoffered(d["name"] for docs in self._withheld_docs.values() for d in docs)
        self._truth_executor = SafeExecutor(self._truth, (), limit)
        self._agent_results: list[str] = []

    def _opening_messages(self, turn: int) -> list[dict[str, Any]]:
        if turn in self._withheld_docs:
            withheld = self._withheld_docs[turn]
            self._executor.offer(withheld)
            if not self.entry.question[turn]:
                return [{"role": "user", "content": f"{withheld}\n{ADDITIONAL_FUNCTION_PROMPT}"}]
        return copy.deepcopy(self.entry.question[turn])

    def _expects_calls(self, turn: int) -> bool:
        return bool(self._truth_calls[turn])

    def _execute(self, call) -> ExecutedCall:
        executed = self._executor.execute(call.name, call.arguments)
        self._agent_results.append(executed.result)
        return executed

    def _hint(self, executed: ExecutedCall) -> str | None:
        owners = self._executor.owner_of
        context = HintContext({n: owners[n] for n in self._executor.offered}, self._executor.offered_docs)
        return hint_for(executed, context)

    def _close_turn(self, turn: int) -> tuple[bool, bool]:
        truth_results = [
            self._truth_executor.execute_positional(c.name, c.args, dict(c.kwargs)) for c in self._truth_calls[turn]
        ]
        if not truth_results:
            return True, True
        return states_match(self._agent, self._truth), responses_contained(truth_results, self._agent_results)
