"""BfclEpisode: one BFCL V3 multi-turn entry as a ToolEnvironment.

Per episode: a backend holding fresh API instances for the agent and a ground-truth twin (both loaded
from the entry's initial_config, long_context for that category) behind a safe executor whitelisting the
offered tools, and the official per-turn checks: state (every public attribute of every instance equals
the twin's) and responses (every result string of the turn's ground-truth calls occurs among all the
agent's results so far). The twin is advanced every turn whatever the agent did. Hints (config) are added
on top of the official result strings; the strings used for checking are never altered.
With a per-call time limit (the default) the backend lives in this process's tool process, which is
killed at the limit (`envtune_jax.environments.hosted_backend`); without one it lives here (the reference path).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Sequence

from envtune_jax.chat.parse import parse_tool_calls
from envtune_jax.environments.base import ToolCall, ToolCallLike
from envtune_jax.environments.bfcl_data import BfclEntry, shared_offered_tool_docs
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.episode_core import TurnBasedEpisode
from envtune_jax.environments.executor import ExecutedCall, public_method_names
from envtune_jax.environments.gt_calls import parse_ground_truth_call
from envtune_jax.environments.hints import HintContext, hint_for
from envtune_jax.environments.hosted_backend import open_backend
from envtune_jax.environments.protocol import decode_official_step
from envtune_jax.environments.rewards import Verdict
from envtune_jax.environments.tool_backend import BackendSpec
from envtune_jax.untrusted_text import echo

# bfcl_eval.constants.default_prompts: the user message of a miss_func hold-out turn (prompting mode,
# which the official Qwen FC handler uses: the withheld docs arrive inside it, as a Python list repr).
ADDITIONAL_FUNCTION_PROMPT = "I have updated some more functions you can choose from. What about now?"
UNDECODABLE_STEP = "the step's tool calls could not be decoded (official BFCL rule)"


class BfclEpisode(TurnBasedEpisode):
    """One BFCL entry. Picklable, so episodes can be stepped in worker processes."""

    def __init__(self, entry: BfclEntry, config: EnvironmentConfig | None = None):
        super().__init__(config or EnvironmentConfig.evaluation())
        self.entry = entry
        self._tool_docs, self._withheld_docs = shared_offered_tool_docs(entry)  # read-only
        self._truth_calls = [[parse_ground_truth_call(s) for s in turn] for turn in entry.ground_truth]
        self._owner_of = {name: cls for cls in entry.involved_classes for name in public_method_names(cls)}

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
        return frozenset(self._offered_docs) if self._started else frozenset(d["name"] for d in self._tool_docs)

    def parse_step(self, text: str, style: str) -> tuple[list[ToolCallLike], list[str]]:
        """The chat parser (`envtune_jax.chat.parse`): calls by the official rule, typed format errors."""
        parsed = parse_tool_calls(text, self.offered_tool_names(), style)
        return list(parsed.well_formed_calls), [error.message for error in parsed.format_errors]

    def decode_step(self, text: str) -> tuple[list[ToolCall], list[str]]:
        """The official Qwen FC rule (`decode_execute`); an undecodable step has no call and one error."""
        calls = decode_official_step(text)
        return ([], [UNDECODABLE_STEP]) if calls is None else (calls, [])

    def agent_results(self) -> list[str]:
        """Every result string the agent's calls produced so far (what the response check searches)."""
        return list(self._agent_results)

    def _start(self) -> None:
        entry = self.entry
        unoffered = ()
        if self.config.execute_withheld_tools:
            unoffered = tuple(d["name"] for docs in self._withheld_docs.values() for d in docs)
        spec = BackendSpec(
            tuple(entry.involved_classes),
            entry.initial_config,
            entry.long_context,
            tuple(d["name"] for d in self._tool_docs),
            unoffered,
        )
        if getattr(self, "_backend", None) is not None:
            self._backend.close()  # reset() of a used episode: its old state is not needed any more
        self._backend = open_backend(spec, self.config.call_time_limit_s)
        self._offered_docs = {doc["name"]: doc for doc in self._tool_docs}
        self._agent_results: list[str] = []

    def _release(self) -> None:
        self._backend.close()

    def _opening_messages(self, turn: int) -> list[dict[str, Any]]:
        if turn in self._withheld_docs:
            withheld = self._withheld_docs[turn]
            self._backend.offer([doc["name"] for doc in withheld])
            self._offered_docs.update((doc["name"], doc) for doc in withheld)
            if not self.entry.question[turn]:
                return [{"role": "user", "content": f"{withheld}\n{ADDITIONAL_FUNCTION_PROMPT}"}]
        return copy.deepcopy(self.entry.question[turn])

    def _expects_calls(self, turn: int) -> bool:
        return bool(self._truth_calls[turn])

    def _execute(self, calls: Sequence) -> list[ExecutedCall]:
        executed = self._backend.execute([(call.name, call.arguments) for call in calls])
        self._agent_results.extend(call.result for call in executed)
        return executed

    def _hint(self, executed: ExecutedCall) -> str | None:
        context = HintContext({n: self._owner_of[n] for n in self._offered_docs}, self._offered_docs)
        # Rules quote the name: quote it bounded (no offered name is long enough to change).
        return hint_for(dataclasses.replace(executed, name=echo(executed.name)), context)

    def _close_turn(self, turn: int) -> Verdict | Callable[[], Verdict]:
        if not self._truth_calls[turn]:
            return True, True
        return self._backend.close_turn(self._truth_calls[turn])
