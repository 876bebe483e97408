"""The interface every tool environment implements (BFCL episodes, the synthetic task).

One environment object is one episode. The caller (training's rollout, the evaluation loop) owns the
conversation: it renders messages, generates the assistant text, appends the assistant message itself, and
hands the environment the step's calls, read by the environment's own parser (its call syntax is the
environment's business: BFCL's <tool_call> JSON blocks, the synthetic task's two words), plus any
format-error strings:

    messages = env.reset()                       # opening user message(s) of turn 0
    while not env.done:
        text = policy(...)                       # one assistant step
        calls, errors = env.parse_step(text, style)   # training (env.decode_step(text): evaluation)
        result = env.step(text, calls, errors)   # tool results / hints / next user turn
        messages += [assistant message] + result.messages
    outcome = env.outcome()                      # rewards, official verdict, counters

Messages are OpenAI-style dicts: {"role": "user" | "tool", "content": str} (tool messages also carry
"name": the called tool). `tools()` is the tool-doc list for the system prompt; it does not change
during an episode (tools withheld at first arrive inside a later user message, as in BFCL).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping, Protocol, Sequence


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """A parsed tool call: name and JSON arguments."""

    name: str
    arguments: dict[str, Any]


class ToolCallLike(Protocol):
    """Anything with `.name` and `.arguments` (e.g. the chat package's parsed calls)."""

    name: str
    arguments: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one step appends to the conversation, and where the episode stands afterwards."""

    messages: list[dict[str, Any]]
    turn_ended: bool
    done: bool


@dataclasses.dataclass(frozen=True)
class EpisodeOutcome:
    """Rewards and verdict of a finished (or truncated) episode.

    `turn_rewards[t]` = r_t in {0, 1} for every turn (unreached turns 0); `progress_reward` = mean over all
    turns (R_P); `syntax_reward` = stage-1 R1 in [0, 2]; `binary_reward` = float(correct); `reward` = the
    one selected by the environment config. `correct` is the official checker's verdict.
    """

    entry_id: str
    turn_rewards: list[float]
    progress_reward: float
    syntax_reward: float
    binary_reward: float
    reward: float
    correct: bool
    counters: dict[str, int]


class EpisodeFinishedError(RuntimeError):
    """step() was called on an episode that is already done."""


class ToolEnvironment(abc.ABC):
    """One episode of a multi-turn tool-use task."""

    #: How calls are written in assistant text: "qwen_json" (the chat package's <tool_call> JSON blocks)
    #: or "compact" (the synthetic task's two-word form, see envtune_jax.environments.synthetic).
    call_syntax: str = "qwen_json"

    @property
    @abc.abstractmethod
    def episode_id(self) -> str:
        """Stable id of the task instance (BFCL entry id, or synthetic task id)."""

    @property
    @abc.abstractmethod
    def category(self) -> str:
        """Reporting group (BFCL category, or "synthetic")."""

    @abc.abstractmethod
    def reset(self) -> list[dict[str, Any]]:
        """Starts (or restarts) the episode; returns the opening user message(s) of turn 0."""

    @abc.abstractmethod
    def tools(self) -> list[dict[str, Any]]:
        """Tool docs for the system prompt (fixed for the episode)."""

    @abc.abstractmethod
    def offered_tool_names(self) -> frozenset[str]:
        """Names callable right now (whitelist of the executor)."""

    @abc.abstractmethod
    def parse_step(self, text: str, style: str) -> tuple[list[ToolCallLike], list[str]]:
        """Training's reading of a step's whole text, in chat prompt style `style`: (calls, format-error
        messages). The calls are every call the official rule decodes, offered or not (a call to a tool not
        offered is a tool error, run into the official error string, never also a format error)."""

    @abc.abstractmethod
    def decode_step(self, text: str) -> tuple[list[ToolCallLike], list[str]]:
        """Evaluation's reading of a step's visible text: (calls, errors) by the official harness's rule."""

    @abc.abstractmethod
    def step(self, assistant_text: str, calls: Sequence[ToolCallLike], format_errors: Sequence[str]) -> StepResult:
        """Applies one assistant step. No calls ends the turn (format feedback off) and reveals the next."""

    @abc.abstractmethod
    def truncate(self, reason: str) -> None:
        """Ends the episode now (token budget exhausted, replay ran out); scored like a force-quit."""

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """True once the last turn ended, the step cap force-quit the episode, or truncate() was called."""

    @abc.abstractmethod
    def outcome(self) -> EpisodeOutcome:
        """Rewards, verdict and counters (valid at any time; unreached turns count as 0)."""

    @abc.abstractmethod
    def steps_log(self) -> list[list[str]]:
        """Raw assistant text per turn, per step: the official result layout of this episode."""
