"""The evaluation loop: episodes played under the official BFCL text protocol, batched across episodes.

`EvaluationEpisodes` holds what happens at a step, once for every way of playing: the policy's state of an
episode (the official history: the conversation as the official harness keeps it), and `take(i, step)`:
the environment decodes the step's calls (`ToolEnvironment.decode_step`, the official rule for BFCL), steps,
and the conversation gets the assistant message the official harness keeps (`protocol.history_message`: what
the model wrote, not a re-serialisation of the decoded calls) and the environment's reply. An episode that
ends yields an `EpisodeRecord`: the outcome (official verdict, rewards, counters) and the visible step texts
in the official result layout, so the run can be re-scored by the official evaluation.
Who steps which episode when is a player's choice: `run_episodes` plays rounds of a `Policy` (every episode
in play answers one step per round), or hands the episodes to an `EpisodePlayer` (a model on the generation
engine, rl/model_policy.py, whose episode runner schedules them on its slots).
`evaluate_bfcl` does this for a list of entries, optionally split across worker processes.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Protocol, Sequence

from envtune_jax.environments.base import EpisodeOutcome, ToolEnvironment
from envtune_jax.environments.bfcl_data import BfclEntry
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.policies import Policy, PolicyState, PolicyStep, ReplayPolicy
from envtune_jax.environments.pool import map_in_chunks
from envtune_jax.environments.protocol import history_message, history_renders_officially

INFERENCE_ERROR_PREFIX = "Error during inference: "  # the official result of an entry whose inference failed
UNRENDERABLE_HISTORY = (
    "the official prompt formatter cannot render the tool calls kept from a step "
    "(a <tool_call> block holding JSON that is not a call with a string name and arguments)"
)


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
            "id": self.episode_id,
            "category": self.category,
            "correct": outcome.correct,
            "progress_reward": outcome.progress_reward,
            "turn_rewards": outcome.turn_rewards,
            "counters": outcome.counters,
        }
        return fields | {"inference_error": self.inference_error} if self.inference_error else fields

    def official_result(self) -> list[list[str]] | str:
        """The entry's `result` in the official result file."""
        return INFERENCE_ERROR_PREFIX + self.inference_error if self.inference_error else self.steps


def _failed_by_inference_error(outcome: EpisodeOutcome) -> EpisodeOutcome:
    """An entry the official harness stops with an error: nothing scores."""
    return dataclasses.replace(
        outcome,
        turn_rewards=[0.0] * len(outcome.turn_rewards),
        progress_reward=0.0,
        syntax_reward=0.0,
        binary_reward=0.0,
        reward=0.0,
        correct=False,
        counters={**outcome.counters, "inference_error": 1},
    )


class EvaluationEpisodes:
    """The episodes of one evaluation and their records (see the module docstring).

    The `messages` of a state are the live conversation lists (read them, do not modify them); with
    keep_history=False they stay empty (for policies that ignore them: oracle, replay, do-nothing). With
    keep_history, a step whose kept message the official formatter cannot render (see
    `bfcl_prompt.history_renders_officially`) ends its episode unless the episode ended with it: the official
    harness would fail at its next query, and the entry is recorded as an inference error."""

    def __init__(
        self,
        episodes: Sequence[ToolEnvironment],
        player_name: str,
        keep_history: bool = True,
        on_record: Callable[[EpisodeRecord], None] | None = None,
        on_round: OnRound | None = None,
    ):
        self.episodes, self.player_name, self.keep_history = list(episodes), player_name, keep_history
        self.on_record, self.on_round = on_record, on_round
        self.records: list[EpisodeRecord | None] = [None] * len(self.episodes)
        self.steps_taken = 0
        self.live: dict[int, None] = {}  # episodes in play, in the order they started
        self._messages: list[list[dict[str, Any]]] = [[] for _ in self.episodes]
        self._tools: list[list[dict[str, Any]]] = [[] for _ in self.episodes]
        self._turn = [0] * len(self.episodes)
        self._step = [0] * len(self.episodes)
        self._inference_error: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.episodes)

    def start(self, i: int) -> bool:
        """Starts episode i; False if it ended at once (then it is recorded)."""
        env = self.episodes[i]
        opening = env.reset()
        if self.keep_history:
            self._messages[i], self._tools[i] = list(opening), env.tools()
        self.live[i] = None
        return self._goes_on(i)

    def state(self, i: int) -> PolicyState:
        env = self.episodes[i]
        return PolicyState(
            env.episode_id, self._turn[i], self._step[i], self._messages[i], self._tools[i], env.call_syntax
        )

    def take(self, i: int, step: PolicyStep | None) -> bool:
        """Plays the player's step of episode i (None: the player stops it); False once the episode has ended
        (then it is recorded)."""
        env = self.episodes[i]
        if step is None:
            env.truncate(f"policy {self.player_name} stopped")
            return self._goes_on(i)
        calls, errors = env.decode_step(step.text)
        result = env.step(step.text, calls, errors)
        self.steps_taken += 1
        if self.keep_history:
            message = history_message(step.output, env.call_syntax)
            self._messages[i].append(message)
            self._messages[i].extend(result.messages)
            if not env.done and not history_renders_officially(message, env.call_syntax):
                self._inference_error[i] = UNRENDERABLE_HISTORY
                env.truncate(f"inference error: {UNRENDERABLE_HISTORY}")
        if result.turn_ended:
            self._turn[i], self._step[i] = self._turn[i] + 1, 0
        else:
            self._step[i] += 1
        return self._goes_on(i)

    def _goes_on(self, i: int) -> bool:
        env = self.episodes[i]
        if not env.done:
            return True
        outcome, error = env.outcome(), self._inference_error.get(i, "")
        if error:
            outcome = _failed_by_inference_error(outcome)
        self.records[i] = EpisodeRecord(env.episode_id, env.category, outcome, env.steps_log(), error)
        del self.live[i]
        if self.on_record is not None:
            self.on_record(self.records[i])
        return False

    def report(self) -> None:
        """Tells `on_round` where the episodes in play stand (after a round)."""
        if self.on_round is not None:
            self.on_round(
                [
                    LiveEpisode(
                        self.episodes[i].episode_id,
                        self._turn[i],
                        self._step[i],
                        getattr(self.episodes[i], "num_turns", None),
                    )
                    for i in self.live
                ],
                self.steps_taken,
            )


class EpisodePlayer(Protocol):
    """Plays every episode of `episodes` to its end, choosing itself which are in play (`start`, `state`,
    `take`), and calls `episodes.report()` after its rounds: a model on the generation engine."""

    name: str

    def play(self, episodes: EvaluationEpisodes) -> None: ...


def run_episodes(
    episodes: Sequence[ToolEnvironment],
    policy: Policy | EpisodePlayer,
    keep_history: bool = True,
    max_live: int | None = None,
    on_record: Callable[[EpisodeRecord], None] | None = None,
    on_round: OnRound | None = None,
) -> list[EpisodeRecord]:
    """Plays every episode to the end; records are in the order of `episodes`.

    A `Policy` answers one step of every episode in play per round; at most `max_live` are in play at once
    (default: all), a finished episode's place going to the next one. Episodes are independent, so this
    changes no result. An `EpisodePlayer` plays the episodes as it chooses (`max_live` does not apply).
    `on_record` is called with each episode's record as soon as the episode ends (to save it, count it);
    `on_round(live episodes, steps taken)` after every round (a progress display).
    """
    session = EvaluationEpisodes(episodes, policy.name, keep_history, on_record, on_round)
    if hasattr(policy, "play"):
        if max_live is not None:
            raise ValueError(f"max_live applies to round-by-round policies; {policy.name} schedules its episodes")
        policy.play(session)
    else:
        _play_rounds(session, policy, len(session) if max_live is None else max(1, int(max_live)))
    return session.records


def _play_rounds(episodes: EvaluationEpisodes, policy: Policy, max_live: int) -> None:
    """Each round asks the policy for one step of every episode in play."""
    waiting = iter(range(len(episodes)))
    live: list[int] = []

    def fill() -> None:  # starts episodes until max_live are in play (or none is left)
        while len(live) < max_live:
            i = next(waiting, None)
            if i is None:
                return
            if episodes.start(i):
                live.append(i)

    fill()
    while live:
        steps = policy.act([episodes.state(i) for i in live])
        if len(steps) != len(live):
            raise RuntimeError(f"policy {policy.name} returned {len(steps)} steps for {len(live)} states")
        live[:] = [i for i, step in zip(live, steps) if episodes.take(i, step)]
        fill()
        episodes.report()


def _evaluate_chunk(
    entries: list[BfclEntry],
    policy: Policy | EpisodePlayer,
    config: EnvironmentConfig,
    keep_history: bool,
    on_record: Callable[[EpisodeRecord], None] | None = None,
    on_round: OnRound | None = None,
) -> list[EpisodeRecord]:
    return run_episodes(
        [BfclEpisode(entry, config) for entry in entries],
        policy,
        keep_history=keep_history,
        on_record=on_record,
        on_round=on_round,
    )


def evaluate_bfcl(
    entries: Sequence[BfclEntry],
    policy: Policy | EpisodePlayer,
    config: EnvironmentConfig | None = None,
    workers: int = 1,
    keep_history: bool = True,
    on_record: Callable[[EpisodeRecord], None] | None = None,
    on_round: OnRound | None = None,
) -> list[EpisodeRecord]:
    """Records for `entries` (in order). workers > 1 splits the entries across processes; the policy
    must then be picklable (oracle, replay and do-nothing are; a model player runs with workers=1).
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


def replay_bfcl(
    entries: Sequence[BfclEntry], recorded: dict[str, list[list[str]]], workers: int = 1
) -> list[EpisodeRecord]:
    """Scores recorded outputs as the official evaluation does (no step cap; an entry whose recording
    has a different number of turns than its ground truth, or is missing, is force-terminated: wrong)."""
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
