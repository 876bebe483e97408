"""Rewards of Environment Tuning as pure functions: per-turn r_t, progress R_P, stage-1 syntax R1.

- r_t (turn with expected calls) = r_state * r_exec, and 0 if the agent made no call in the turn.
- r_t (turn whose ground truth is empty, miss_func / miss_param) = 1 for a text reply, 0 if any tool
  call was made (or blocked) in the turn.
- R_P = sum_t r_t / T over all T turns of the entry (unreached turns count 0, so truncation never helps).
- R1 = I_tool * (R_format + R_tool), R_format = (N - steps with format errors) / N over the N steps,
  R_tool = valid calls / (valid + invalid calls), I_tool = 1 iff a tool call was attempted.
"""

from __future__ import annotations

from typing import Sequence

Verdict = tuple[bool, bool]  # a closed turn's official checks: (state matches, responses contained)


def turn_reward(expects_calls: bool, made_call: bool, state_ok: bool, responses_ok: bool) -> float:
    if not expects_calls:
        return 0.0 if made_call else 1.0
    return 1.0 if (made_call and state_ok and responses_ok) else 0.0


def progress_reward(turn_rewards: Sequence[float], num_turns: int) -> float:
    if num_turns <= 0:
        raise ValueError(f"an episode has at least one turn, got num_turns={num_turns}")
    if len(turn_rewards) > num_turns:
        raise ValueError(f"{len(turn_rewards)} turn rewards for {num_turns} turns")
    return float(sum(turn_rewards)) / num_turns


def syntax_reward(steps: int, format_error_steps: int, valid_calls: int, invalid_calls: int) -> float:
    attempted = valid_calls + invalid_calls > 0 or format_error_steps > 0
    if not attempted or steps == 0:
        return 0.0
    format_score = (steps - format_error_steps) / steps
    tool_score = valid_calls / (valid_calls + invalid_calls) if valid_calls + invalid_calls else 0.0
    return format_score + tool_score


def responses_contained(expected: Sequence[str], produced: Sequence[str]) -> bool:
    """Multiset containment: every expected result string occurs in `produced` (any order, exact)."""
    remaining: dict[str, int] = {}
    for item in produced:
        remaining[item] = remaining.get(item, 0) + 1
    for item in expected:
        if remaining.get(item, 0) == 0:
            return False
        remaining[item] -= 1
    return True
