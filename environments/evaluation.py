"""The evaluation loop: episodes played by a policy through the text protocol, batched across episodes.

Each round asks the policy for one step of every unfinished episode, decodes the calls (official BFCL
rule, `protocol.decode_for_evaluation`), steps the environment and extends the conversation with the
assistant message the official harness keeps (`protocol.history_message`: what the model wrote, not a
re-serialisation of the decoded calls) and the environment's reply; an episode whose step the policy has
not finished yet (`STEP_PENDING`) waits for the next round as it is. Finished episodes yield an
`EpisodeRecord`: the outcome (official verdict, rewards, counters) and the visible step texts in the
official result layout, so the run can be re-scored by the official evaluation.
`evaluate_bfcl` does this for a list of entries, optionally split across worker processes.
"""
from __future__ import annotations

import dataclasses
import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

from environments.base import EpisodeOutcome, ToolCall, ToolEnvironment
from environments.bfcl_data import BfclEntry
from environments.bfcl_env import BfclEpisode
from environments.config import EnvironmentConfig
from environments.policies import STEP_PENDING, Policy, PolicyState
from environments.pool import map_in_chunks
from environments.protocol import decode_for_evaluation, history_message, history_renders_officially

Decoder = Callable[[str, ToolEnvironment], "tuple[list[ToolCall], list[str]]"]


INFERENCE_ERROR_PREFIX = "Error during inference: "  # the official result of an entry whose inference failed
UNRENDERABLE_HISTORY = ("the official prompt formatter cannot render the tool calls kept from a step "
                        "(a <tool_call> block holding JSON that is not a call with a string name and arguments)")


@dataclasses.dataclass(frozen=True)
class LiveEpisode:
    """Where an episode in play stands (for progress displays): 0-based turn and step within the turn."""
    episode_id: str
    turn: int
    step: int
    num_turns: int | None


OnRound = Callable[[list[LiveEpisode], int], None]  # (episodes in play, steps taken so far in all)


@dataclasses.dataclass(frozen=True)
class EpisodeRecord:
    episode_id: str
    category: str
    outcome: EpisodeOutcome
    steps: list[list[str]]  # official result layout: per turn, per step, the visible text
    # Why the official harness would have stopped this entry with an error ("" if it would not); such an
    # entry scores 0, and its official result is INFERENCE_ERROR_PREFIX + this reason instead of the steps.
    inference_error: str = ""

    def to_json(self) -> dict[str, Any]:
        outcome = self.outcome
        fields = {
            "id": self.episode_id, "category": self.category, "correct": outcome.correct,
            "progress_reward": outcome.progress_reward, "turn_rewards": outcome.turn_rewards,
            "counters": outcome.counters,
        }
        return fields | {"inference_error": self.inference_error} if self.inference_error else fields

    def official_result(self) -> list[list[str]] | str:
        """The entry's `result` in the official result file."""
        return INFERENCE_ERROR_PREFIX + self.inference_error if self.inference_error else self.steps


def _failed_by_inference_error(outcome: EpisodeOutcome) -> EpisodeOutcome:
    """An entry the official harness stops with an error: nothing scores."""
    return dataclasses.replace(
        outcome, turn_rewards=[0.0] * len(outcome.turn_rewards), progress_reward=0.0, syntax_reward=0.0,
        binary_reward=0.0, reward=0.0, correct=False, counters={**outcome.counters, "inference_error": 1})


def run_episodes(episodes: Sequence[ToolEnvironment], policy: Policy, decode: Decoder = decode_for_evaluation,
                 keep_history: bool = True, max_live: int | None = None,
                 on_record: Callable[[EpisodeRecord], None] | None = None,
                 on_round: OnRound | None = None) -> list[EpisodeRecord]:
    """Plays every episode to the end; records are in the order of `episodes`.

    The `messages` a policy receives are the live conversation lists (read them, do not modify them);
    with keep_history=False they stay empty (for policies that ignore them: oracle, replay, do-nothing).
    With keep_history, a step whose kept message the official formatter cannot render (see
    `bfcl_prompt.history_renders_officially`) ends its episode unless the episode ended with it: the
    official harness would fail at its next query, and the entry is recorded as an inference error.
    At most `max_live` episodes are in play at once (default: the policy's `max_live_episodes`, if it
    has one; else all): a finished episode's place goes to the next one, so a model policy can keep each
    live conversation in its cache from step to step. Episodes are independent, so this changes no result.
    A policy may answer STEP_PENDING for an episode whose step it is still generating: that episode keeps
    its state (and its place) and is asked again in the next round.
    `on_record` is called with each episode's record as soon as the episode ends (to save it, count it);
    `on_round(live episodes, steps taken)` after every round (a progress display).
    """
    max_live = max_live if max_live is not None else getattr(policy, "max_live_episodes", None)
    max_live = len(episodes) if max_live is None else max(1, int(max_live))
    conversations: list[list[dict[str, Any]]] = [[] for _ in episodes]
    tools: list[list[dict[str, Any]]] = [[] for _ in episodes]
    turn_of = [0] * len(episodes)
    step_of = [0] * len(episodes)
    pending = iter(range(len(episodes)))
    active: list[int] = []
    records: list[EpisodeRecord | None] = [None] * len(episodes)
    steps_taken = 0
    inference_errors: dict[int, str] = {}

    def finish(i: int) -> None:
        env = episodes[i]
        if i in inference_errors:
            records[i] = EpisodeRecord(env.episode_id, env.category, _failed_by_inference_error(env.outcome()),
                                       env.steps_log(), inference_errors[i])
        else:
            records[i] = EpisodeRecord(env.episode_id, env.category, env.outcome(), env.steps_log())
        if on_record is not None:
            on_record(records[i])

    def fill() -> None:  # starts episodes until max_live are in play (or none is left)
        while len(active) < max_live:
            i = next(pending, None)
            if i is None:
                return
            opening = episodes[i].reset()
            if keep_history:
                conversations[i], tools[i] = list(opening), episodes[i].tools()
            if episodes[i].done:
                finish(i)
            else:
                active.append(i)

    fill()
    while active:
        states = [
            PolicyState(episodes[i].episode_id, turn_of[i], step_of[i], conversations[i], tools[i],
                        episodes[i].call_syntax)
            for i in active
        ]
        steps = policy.act(states)
        if len(steps) != len(active):
            raise RuntimeError(f"policy {policy.name} returned {len(steps)} steps for {len(active)} states")
        for i, step in zip(active, steps):
            env = episodes[i]
            if step is STEP_PENDING:
                continue
            if step is None:
                env.truncate(f"policy {policy.name} stopped")
                continue
            calls, errors = decode(step.text, env)
            result = env.step(step.text, calls, errors)
            steps_taken += 1
            if keep_history:
                message = history_message(step.output, env.call_syntax)
                conversations[i].append(message)
                conversations[i].extend(result.messages)
                if not env.done and not history_renders_officially(message, env.call_syntax):
                    inference_errors[i] = UNRENDERABLE_HISTORY
                    env.truncate(f"inference error: {UNRENDERABLE_HISTORY}")
            if result.turn_ended:
                turn_of[i], step_of[i] = turn_of[i] + 1, 0
            else:
                step_of[i] += 1
        for i in active:
            if episodes[i].done:
                finish(i)
        active[:] = [i for i in active if not episodes[i].done]
        fill()
        if on_round is not None:
            on_round([LiveEpisode(episodes[i].episode_id, turn_of[i], step_of[i], getattr(episodes[i], "num_turns", None))
                      for i in active], steps_taken)
    return records


def _evaluate_chunk(entries: list[BfclEntry], policy: Policy, config: EnvironmentConfig, keep_history: bool,
                    on_record: Callable[[EpisodeRecord], None] | None = None,
                    on_round: OnRound | None = None) -> list[EpisodeRecord]:
    return run_episodes([BfclEpisode(entry, config) for entry in entries], policy, keep_history=keep_history,
                        on_record=on_record, on_round=on_round)


def evaluate_bfcl(entries: Sequence[BfclEntry], policy: Policy, config: EnvironmentConfig | None = None,
                  workers: int = 1, keep_history: bool = True,
                  on_record: Callable[[EpisodeRecord], None] | None = None,
                  on_round: OnRound | None = None) -> list[EpisodeRecord]:
    """Records for `entries` (in order). workers > 1 splits the entries across processes; the policy
    must then be picklable (oracle, replay and do-nothing are; a model policy should run with workers=1).
    Workers are spawned, not forked: forking a process that runs JAX threads can deadlock.
    `on_record` gets each record as its episode ends (with workers > 1: once every worker is done); `on_round`
    hears the episodes in play after every round (in this process only: not with workers > 1)."""
    config = config or EnvironmentConfig.evaluation()
    if workers <= 1 or len(entries) < 2:
        return _evaluate_chunk(list(entries), policy, config, keep_history, on_record, on_round)
    run_chunk = functools.partial(_evaluate_chunk, policy=policy, config=config, keep_history=keep_history)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        records = map_in_chunks(pool, run_chunk, list(entries), workers)
    if on_record is not None:
        for record in records:
            on_record(record)
    return records


def replay_bfcl(entries: Sequence[BfclEntry], recorded: dict[str, list[list[str]]],
                workers: int = 1) -> list[EpisodeRecord]:
    """Scores recorded outputs as the official evaluation does (no step cap; an entry whose recording
    has a different number of turns than its ground truth, or is missing, is force-terminated: wrong)."""
    from environments.policies import ReplayPolicy

    policy = ReplayPolicy(recorded)
    records = evaluate_bfcl(entries, policy, EnvironmentConfig.replay(), workers, keep_history=False)
    by_id = {entry.id: entry for entry in entries}
    fixed = []
    for record in records:
        turns = policy.recorded_turn_counts.get(record.episode_id, 0)
        if record.outcome.correct and turns != by_id[record.episode_id].num_turns:
            outcome = dataclasses.replace(record.outcome, correct=False, binary_reward=0.0, reward=0.0)
            record = dataclasses.replace(record, outcome=outcome)
        fixed.append(record)
    return fixed
