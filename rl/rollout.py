"""The multi-turn rollout driver: sampler ⇄ chat protocol ⇄ tool environments, turn by turn.

For a batch of episodes (G samples per prompt are G episodes of the same task) it prefills every
rendered prompt, then repeats: decode every live sequence until it ends its step (stop token or
per-step budget) → parse the step's tool calls → step the environment → render the environment's
reply (tool results, hints, next user turn) as tokens → append them to the live KV cache with
`extend` (no re-prefill) → decode again. Sampled ids are kept exactly as sampled; the token
sequence, loss mask and sampler log-probs of each trajectory are what the trainer consumes.
Episodes over their token budget are truncated and scored over all their turns.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import jax
import numpy as np
from tokenizers import Tokenizer

from environments.base import EpisodeOutcome, ToolEnvironment
from environments.synthetic import parse_compact_calls
from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.chat.conversation import TokenConversation
from models.generation.engine import GenerationEngine
from models.generation.sampling import SamplingParams


@dataclasses.dataclass
class RolloutConfig:
    max_prompt_tokens: int = 8192  # the rendered first prompt; longer tasks are skipped with a warning
    max_response_tokens: int = 24576  # model + environment tokens after the prompt, whole episode
    max_context_tokens: int = 32768
    max_new_tokens_per_step: int = 1024


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
class RolloutStats:
    generation_s: float = 0.0
    environment_s: float = 0.0
    decode_calls: int = 0
    sampled_tokens: int = 0
    environment_tokens: int = 0


def _parse_step(episode: ToolEnvironment, conversation: TokenConversation):
    """(calls, format-error messages, text) of the conversation's latest assistant step."""
    segment = conversation.boundaries[-1]
    text = conversation.sampled_text(segment)
    if episode.call_syntax == "compact":
        calls, errors = parse_compact_calls(text, sorted(episode.offered_tool_names()))
        return calls, errors, text
    parsed = conversation.parse_last_step(episode.offered_tool_names())
    errors = [error.message for error in parsed.errors]
    return list(parsed.well_formed_calls), errors, text


def run_rollouts(engine: GenerationEngine, tokenizer: Tokenizer, chat: ChatConfig, episodes: Sequence[ToolEnvironment],
                 groups: Sequence[int], sampling: SamplingParams, config: RolloutConfig, rng: int | jax.Array = 0,
                 keep_text: bool = False, stats: RolloutStats | None = None) -> list[Trajectory]:
    """Plays every episode to its end; returns one Trajectory per episode (same order).

    Episodes are played in waves of `engine.batch_size` slots.
    """
    stats = stats if stats is not None else RolloutStats()
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    out: list[Trajectory] = []
    for wave, first in enumerate(range(0, len(episodes), engine.batch_size)):
        chunk = list(episodes[first:first + engine.batch_size])
        out.extend(_run_wave(engine, tokenizer, chat, chunk, list(groups[first:first + len(chunk)]), sampling, config,
                             jax.random.fold_in(key, wave), keep_text, stats))
    return out


def _run_wave(engine, tokenizer, chat, episodes, groups, sampling, config, key, keep_text, stats) -> list[Trajectory]:
    vocab = engine.config.vocab_size
    conversations = []
    truncated = [False] * len(episodes)
    t0 = time.perf_counter()
    for episode in episodes:
        conversation = TokenConversation(tokenizer, chat, vocab_size=vocab)
        conversation.start(episode.reset(), episode.tools())
        conversations.append(conversation)
    stats.environment_s += time.perf_counter() - t0
    prompt_lengths = [len(c) for c in conversations]
    for i, length in enumerate(prompt_lengths):
        if length > config.max_prompt_tokens:
            episodes[i].truncate(f"prompt of {length} tokens exceeds max_prompt_tokens={config.max_prompt_tokens}")
            truncated[i] = True
    live = [not episodes[i].done for i in range(len(episodes))]
    step_sampling = dataclasses.replace(sampling, max_new_tokens=min(_max_budget(sampling), config.max_new_tokens_per_step))
    t0 = time.perf_counter()
    state = engine.start([c.ids if live[i] else c.ids[:1] for i, c in enumerate(conversations)], key)
    stats.generation_s += time.perf_counter() - t0
    while any(live):
        t0 = time.perf_counter()
        active = [i for i, alive in enumerate(live) if alive]
        state, result = engine.decode(state, step_sampling, active=active)
        stats.generation_s += time.perf_counter() - t0
        stats.decode_calls += 1
        t0 = time.perf_counter()
        appends: dict[int, list[int]] = {}
        for i in active:
            sampled = result.tokens[i, :result.num_tokens[i]].tolist()
            stats.sampled_tokens += len(sampled)
            conversation, episode = conversations[i], episodes[i]
            conversation.append_sampled(sampled)
            calls, errors, text = _parse_step(episode, conversation)
            step = episode.step(text, calls, errors)
            if episode.done:
                live[i] = False
                continue
            segment = conversation.append_environment(step.messages)
            used = len(conversation) - prompt_lengths[i]
            if used + config.max_new_tokens_per_step > config.max_response_tokens or \
                    len(conversation) + config.max_new_tokens_per_step > min(config.max_context_tokens, engine.max_cache_len):
                episode.truncate(f"token budget: {used} response tokens after step")
                truncated[i] = True
                live[i] = False
                continue
            appends[i] = conversation.ids[segment.start:segment.end]
            stats.environment_tokens += segment.end - segment.start
        stats.environment_s += time.perf_counter() - t0
        if appends:
            t0 = time.perf_counter()
            state = engine.extend(state, appends)
            stats.generation_s += time.perf_counter() - t0
    history = engine.history(state)
    trajectories = []
    for i, (episode, conversation) in enumerate(zip(episodes, conversations)):
        ids, mask = conversation.arrays()
        logprobs = np.zeros(len(ids), np.float32)
        if mask.any():
            n = min(len(ids), int(history.lengths[i]))
            if not np.array_equal(history.tokens[i, :n], ids[:n]):
                raise RuntimeError(f"episode {episode.episode_id}: sampler and conversation token ids diverged")
            logprobs[:n] = np.where(mask[:n] > 0, history.logprobs[i, :n], 0.0)
        trajectories.append(Trajectory(episode.episode_id, episode.category, groups[i], ids, mask, logprobs,
                                       episode.outcome(), truncated[i], conversation.text() if keep_text else ""))
    return trajectories


def _max_budget(sampling: SamplingParams) -> int:
    budget = sampling.max_new_tokens
    return int(budget if isinstance(budget, int) else max(budget))
