"""Training's episodes on the episode runner: the token-level protocol and `run_rollouts`.

A rollout plays every episode of an update (P prompts x G samples: G episodes of the same task) with the
episode runner (rl/episode_runner.py: slots, refills, shared prompts, streamed decode chunks). This module
owns the episodes' side: each episode is a `TokenConversation` whose ids are the exact sampled ids followed
by the environment's replies rendered as tokens, so every request continues the slot's cache and only the
environment's tokens are appended (no re-prefill, no re-tokenisation of sampled text). The token sequence,
loss mask and sampler log-probs of each trajectory are what the trainer consumes.
A step's calls are read by its environment (`ToolEnvironment.parse_step`, with the chat style).
Token limits are real caps: each step's budget is `max_new_tokens_per_step` clipped to what remains of the
episode's response budget (`max_response_tokens`, model and environment tokens after the prompt) and of its
context (`max_context_tokens`, at most the engine's cache), so a step may be cut short to end exactly at the
cap; an episode is truncated (and scored over all its turns) only once nothing remains.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np
from tokenizers import Tokenizer

from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.chat.conversation import TokenConversation
from envtune_jax.environments.base import EpisodeOutcome, ToolEnvironment
from envtune_jax.models.generation.engine import GenerationEngine
from envtune_jax.models.generation.sampling import SamplingParams
from envtune_jax.progress import OnPhase
from envtune_jax.rl.episode_runner import EpisodeRunner, RunnerStats, SamplerRow, StepRequest
from envtune_jax.rl.rollout_config import RolloutConfig


@dataclasses.dataclass
class Trajectory:
    episode_id: str
    category: str
    group: int  # index of the prompt this sample belongs to
    token_ids: np.ndarray  # [T] int32
    loss_mask: np.ndarray  # [T] int32: 1 on model-sampled tokens
    sampler_logprobs: np.ndarray  # [T] float32: sampler log-prob of each sampled token, 0 elsewhere
    outcome: EpisodeOutcome
    truncated: bool
    text: str = ""

    @property
    def reward(self) -> float:
        return self.outcome.reward


@dataclasses.dataclass
class RolloutStats(RunnerStats):
    environment_tokens: int = 0  # environment reply tokens appended to live caches


def read_last_step(episode: ToolEnvironment, conversation: TokenConversation):
    """(calls, format-error messages, text) of the conversation's latest assistant step, read by its
    environment in the conversation's chat style: every call the official rule decodes, offered or not (a call
    to a tool the environment does not offer runs into the official error string: a tool error, never also a
    format error)."""
    text = conversation.sampled_text(conversation.boundaries[-1])
    calls, errors = episode.parse_step(text, conversation.config.style)
    return calls, errors, text


class TokenEpisodes:
    """The token-level protocol: conversations of exact token ids, environment tokens appended."""

    def __init__(
        self,
        episodes: Sequence[ToolEnvironment],
        groups: Sequence[int],
        tokenizer: Tokenizer,
        chat: ChatConfig,
        config: RolloutConfig,
        step_max: int,
        context_cap: int,
        vocab_size: int,
        stats: RolloutStats,
        keep_text: bool,
    ):
        self.episodes, self.groups, self.tokenizer, self.chat, self.config = episodes, groups, tokenizer, chat, config
        self.step_max, self.context_cap, self.vocab_size = step_max, context_cap, vocab_size
        self.stats, self.keep_text = stats, keep_text
        self.conversations: dict[int, TokenConversation] = {}
        self.prompt_lengths: dict[int, int] = {}
        self.truncated = [False] * len(episodes)
        self.trajectories: list[Trajectory | None] = [None] * len(episodes)

    def _budget(self, i: int) -> int:
        """The per-step budget clipped to what remains of episode i's response and context budgets."""
        length = len(self.conversations[i])
        return min(
            self.step_max,
            self.config.max_response_tokens - (length - self.prompt_lengths[i]),
            self.context_cap - length,
        )

    def _truncate(self, i: int, reason: str) -> None:
        self.episodes[i].truncate(reason)
        self.truncated[i] = True

    def begin(self, i: int) -> StepRequest | None:
        episode = self.episodes[i]
        conversation = self.conversations[i] = TokenConversation(self.tokenizer, self.chat, vocab_size=self.vocab_size)
        conversation.start(episode.reset(), episode.tools())
        length = self.prompt_lengths[i] = len(conversation)
        if length > self.config.max_prompt_tokens:
            self._truncate(i, f"prompt of {length} tokens exceeds max_prompt_tokens={self.config.max_prompt_tokens}")
        elif self._budget(i) < 1:
            self._truncate(i, f"prompt of {length} tokens leaves no room in a context of {self.context_cap}")
        return None if episode.done else StepRequest(conversation.ids, self._budget(i))

    def step_ended(self, i: int, step_ids: list[int]) -> StepRequest | None:
        episode, conversation = self.episodes[i], self.conversations[i]
        conversation.append_sampled(step_ids)
        calls, errors, text = read_last_step(episode, conversation)
        step = episode.step(text, calls, errors)
        if episode.done:
            return None
        segment = conversation.append_environment(step.messages)
        budget = self._budget(i)
        if budget < 1:
            used = len(conversation) - self.prompt_lengths[i]
            self._truncate(
                i,
                f"token budget: {used} of {self.config.max_response_tokens} response tokens used, "
                f"{len(conversation)} of {self.context_cap} context tokens",
            )
            return None
        self.stats.environment_tokens += segment.end - segment.start
        return StepRequest(conversation.ids, budget)

    def finish(self, i: int, sampler_row: Callable[[], SamplerRow] | None) -> None:
        self.trajectories[i] = _trajectory(
            self.episodes[i], self.conversations[i], self.groups[i], self.truncated[i], sampler_row, self.keep_text
        )


def run_rollouts(
    engine: GenerationEngine,
    tokenizer: Tokenizer,
    chat: ChatConfig,
    episodes: Sequence[ToolEnvironment],
    groups: Sequence[int],
    sampling: SamplingParams,
    config: RolloutConfig,
    rng: int | jax.Array = 0,
    keep_text: bool = False,
    stats: RolloutStats | None = None,
    on_phase: OnPhase | None = None,
) -> list[Trajectory]:
    """Plays every episode to its end; returns one Trajectory per episode (same order).

    Episodes start in order as the runner's slots free up, decoded `config.decode_chunk` tokens per call;
    samples of a group share their prompt's prefill (a refill, a fork, or a shared-prefix region). The runner
    gives the k-th refill's slot s the PRNG key fold_in(fold_in(rng, k), s). `on_phase("rollout" |
    "environment", episodes done, episodes in all)` is called before every decode call and every round of
    environment steps (envtune_jax/progress.py shows it)."""
    stats = stats if stats is not None else RolloutStats()
    step_max = min(_max_budget(sampling), config.max_new_tokens_per_step)
    context_cap = min(config.max_context_tokens, engine.max_cache_len)
    protocol = TokenEpisodes(
        episodes, groups, tokenizer, chat, config, step_max, context_cap, engine.config.vocab_size, stats, keep_text
    )
    EpisodeRunner(engine, sampling, config.decode_chunk).run(protocol, len(episodes), rng, stats, on_phase)
    return protocol.trajectories


def _trajectory(
    episode: ToolEnvironment,
    conversation: TokenConversation,
    group: int,
    truncated: bool,
    sampler_row: Callable[[], SamplerRow] | None,
    keep_text: bool,
) -> Trajectory:
    """The finished episode's trajectory, its sampler log-probs read from its slot's history."""
    ids, mask = conversation.arrays()
    logprobs = np.zeros(len(ids), np.float32)
    if mask.any():
        row = sampler_row()
        n = min(len(ids), row.length)
        if not np.array_equal(row.tokens_s[:n], ids[:n]):
            raise RuntimeError(f"episode {episode.episode_id}: sampler and conversation token ids diverged")
        if not np.all(row.sampled_s[:n][mask[:n] > 0]):
            raise RuntimeError(f"episode {episode.episode_id}: sampled tokens were prefilled again")
        logprobs[:n] = np.where(mask[:n] > 0, row.logprobs_s[:n], 0.0)
    return Trajectory(
        episode.episode_id,
        episode.category,
        group,
        ids,
        mask,
        logprobs,
        episode.outcome(),
        truncated,
        conversation.text() if keep_text else "",
    )


def _max_budget(sampling: SamplingParams) -> int:
    budget = sampling.max_new_tokens
    return int(budget if isinstance(budget, int) else max(budget))
