"""The turn protocol and reward bookkeeping shared by every environment (BFCL and synthetic).

Protocol (the official BFCL harness): within a turn, each step with at least one call is executed and
its results returned; a step with no call ends the turn, the turn is scored, and the next turn's user
message is revealed. A step with calls beyond `max_steps_per_turn` force-quits the episode (its calls
still run). Augmentation switches (config) add hints to failing results, return format errors as
feedback without ending the turn, and block calls on turns that expect none (with a warning prepended
to the next user message). Subclasses supply the task: opening messages, execution, ground truth, checks.
What the environment writes around the model's output (format feedback, hints, the echoed tool name) is
bounded (`envtune_jax.untrusted_text`); tool results themselves are the official strings, unchanged.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Sequence

from envtune_jax.environments.base import (
    EpisodeFinishedError,
    EpisodeOutcome,
    StepResult,
    ToolCallLike,
    ToolEnvironment,
)
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.executor import ExecutedCall
from envtune_jax.environments.rewards import Verdict, progress_reward, syntax_reward, turn_reward
from envtune_jax.untrusted_text import bounded_message, echo

EMPTY_TURN_WARNING = (
    "[System warning] Your previous reply called a tool although the request could not be completed: "
    "a needed function or parameter was missing. In that situation do not call tools; say what is "
    "missing or ask the user for it."
)


class TurnBasedEpisode(ToolEnvironment):
    """Implements reset/step/truncate/outcome over the hooks below."""

    def __init__(self, config: EnvironmentConfig):
        self.config = config
        self._started = False

    # ---- hooks -------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def num_turns(self) -> int: ...

    @abc.abstractmethod
    def _start(self) -> None:
        """Creates fresh task state (instances, ground-truth twin)."""

    @abc.abstractmethod
    def _opening_messages(self, turn: int) -> list[dict[str, Any]]:
        """User message(s) opening `turn` (and offers any tools that become available in it)."""

    @abc.abstractmethod
    def _expects_calls(self, turn: int) -> bool: ...

    @abc.abstractmethod
    def _execute(self, calls: Sequence[ToolCallLike]) -> list[ExecutedCall]:
        """Runs one step's calls in order (one batch, so a tool process answers them in one round trip)."""

    @abc.abstractmethod
    def _hint(self, executed: ExecutedCall) -> str | None:
        """Actionable hint for a failing result, or None."""

    @abc.abstractmethod
    def _close_turn(self, turn: int) -> "Verdict | Callable[[], Verdict]":
        """Advances the ground truth through `turn`; returns (state matches, responses contained), or a
        function giving them when the outcome is asked for (a tool process answers later)."""

    def _release(self) -> None:
        """Called once when the episode is done: free task state held elsewhere (a tool process)."""

    # ---- protocol ----------------------------------------------------------------------------------
    def reset(self) -> list[dict[str, Any]]:
        self._start()
        self._started = True
        self._turn = 0
        self._steps_in_turn = 0
        self._made_call_in_turn = False
        self._closed_turns: list[tuple[bool, bool, Verdict | Callable[[], Verdict]]] = []  # (expects, called, verdict)
        self._unreached_turns = False  # the episode ended before its last turn
        self._done = False
        self._warn_next_turn = False
        self._log: list[list[str]] = [[]]
        self._counters = dict(
            steps=0,
            tool_calls=0,
            valid_calls=0,
            invalid_calls=0,
            tool_errors=0,
            format_errors=0,
            format_error_steps=0,
            hints=0,
            blocked_calls=0,
            turns_completed=0,
            force_quit=0,
            truncated=0,
        )
        return self._opening_messages(0)

    @property
    def done(self) -> bool:
        return self._started and self._done

    def steps_log(self) -> list[list[str]]:
        return [list(turn) for turn in self._log] if self._started else []

    def step(self, assistant_text: str, calls: Sequence[ToolCallLike], format_errors: Sequence[str]) -> StepResult:
        if not self._started:
            raise EpisodeFinishedError("call reset() before step()")
        if self._done:
            raise EpisodeFinishedError(f"episode {self.episode_id} is already done")
        self._log[self._turn].append(assistant_text)
        self._counters["steps"] += 1
        if format_errors:
            self._counters["format_errors"] += len(format_errors)
            self._counters["format_error_steps"] += 1
        feedback = (
            [{"role": "tool", "content": bounded_message(str(error))} for error in format_errors]
            if self.config.format_feedback
            else []
        )

        if calls and self.config.empty_turn_warning and not self._expects_calls(self._turn):
            self._counters["blocked_calls"] += len(calls)
            self._made_call_in_turn = True
            self._warn_next_turn = True
            return self._end_turn()
        if not calls and not feedback:
            return self._end_turn()

        messages = [self._tool_message(executed) for executed in self._execute(calls)] if calls else []
        messages += feedback
        if calls:
            self._made_call_in_turn = True
        self._steps_in_turn += 1
        cap = self.config.max_steps_per_turn
        if cap is not None and self._steps_in_turn > cap:
            self._counters["force_quit"] = 1
            self._finish_episode_early()
            return StepResult(messages, turn_ended=True, done=True)
        return StepResult(messages, turn_ended=False, done=False)

    def _tool_message(self, executed: ExecutedCall) -> dict[str, Any]:
        self._counters["tool_calls"] += 1
        self._counters["valid_calls" if executed.valid else "invalid_calls"] += 1
        if executed.raised or executed.reported_error:
            self._counters["tool_errors"] += 1
        content = executed.result
        if self.config.hints:
            hint = self._hint(executed)
            if hint:
                self._counters["hints"] += 1
                content = f"{content}\n{bounded_message(hint)}"
        return {"role": "tool", "name": echo(executed.name), "content": content}

    def _score_current_turn(self) -> None:
        turn = self._turn
        self._closed_turns.append((self._expects_calls(turn), self._made_call_in_turn, self._close_turn(turn)))
        self._counters["turns_completed"] += 1

    def _turn_scores(self) -> tuple[list[float], bool]:
        """(r_t of each closed turn, whether every closed turn that expects calls passed)."""
        rewards, passed = [], True
        for index, (expects, called, verdict) in enumerate(self._closed_turns):
            if callable(verdict):
                verdict = verdict()
                self._closed_turns[index] = (expects, called, verdict)
            state_ok, responses_ok = verdict
            rewards.append(turn_reward(expects, called, state_ok, responses_ok))
            if expects and not (called and state_ok and responses_ok):
                passed = False
        return rewards, passed

    def _end_turn(self) -> StepResult:
        self._score_current_turn()
        self._turn += 1
        if self._turn >= self.num_turns:
            self._set_done()
            return StepResult([], turn_ended=True, done=True)
        self._steps_in_turn = 0
        self._made_call_in_turn = False
        self._log.append([])
        messages = self._opening_messages(self._turn)
        if self._warn_next_turn and messages:
            first = dict(messages[0])
            first["content"] = f"{EMPTY_TURN_WARNING}\n\n{first['content']}"
            messages = [first] + messages[1:]
        self._warn_next_turn = False
        return StepResult(messages, turn_ended=True, done=False)

    def _finish_episode_early(self) -> None:
        """Force-quit / truncation: the current turn is scored on what ran; later turns score 0.

        As in the official evaluation, the verdict can only pass if this was the last turn.
        """
        self._score_current_turn()
        if self._turn < self.num_turns - 1:
            self._unreached_turns = True
        self._set_done()

    def _set_done(self) -> None:
        self._done = True
        self._release()

    def truncate(self, reason: str) -> None:
        if not self._started:
            raise EpisodeFinishedError("call reset() before truncate()")
        if self._done:
            return
        self._counters["truncated"] = 1
        if not self._log[self._turn]:  # the current turn never started: it is unreached, like the rest
            self._unreached_turns = True
            self._set_done()
            return
        self._finish_episode_early()

    def outcome(self) -> EpisodeOutcome:
        if not self._started:
            raise EpisodeFinishedError("call reset() before outcome()")
        closed_rewards, closed_pass = self._turn_scores()
        turn_rewards = closed_rewards + [0.0] * (self.num_turns - len(closed_rewards))
        correct = self._done and closed_pass and not self._unreached_turns
        progress = progress_reward(turn_rewards, self.num_turns)
        syntax = syntax_reward(
            self._counters["steps"],
            self._counters["format_error_steps"],
            self._counters["valid_calls"],
            self._counters["invalid_calls"],
        )
        binary = 1.0 if correct else 0.0
        chosen = {"progress": progress, "syntax": syntax, "binary": binary}[self.config.reward]
        return EpisodeOutcome(
            entry_id=self.episode_id,
            turn_rewards=turn_rewards,
            progress_reward=progress,
            syntax_reward=syntax,
            binary_reward=binary,
            reward=chosen,
            correct=correct,
            counters=dict(self._counters),
        )
