"""The multi-turn rollout driver: sampler ⇄ chat protocol ⇄ tool environments, turn by turn.

The episodes (G samples per prompt are G episodes of the same task) share the engine's slots by
continuous batching: an episode starts when a slot is free, with its rendered prompt prefilled; then,
round by round: decode every live sequence (up to `decode_chunk` tokens) until it ends its step (stop
token or per-step budget) → parse the step's tool calls → step the environment → render the environment's
reply (tool results, hints, next user turn) as tokens → append them to the live KV cache with
`extend` (no re-prefill) → decode again. Sampled ids are kept exactly as sampled; the token
sequence, loss mask and sampler log-probs of each trajectory are what the trainer consumes.
Token limits are real caps: each step's budget is `max_new_tokens_per_step` clipped to what remains of
the episode's response budget (`max_response_tokens`, model and environment tokens after the prompt)
and of its context (`max_context_tokens`, at most the engine's cache), so a step may be cut short to end
exactly at the cap; an episode is truncated (and scored over all its turns) only once nothing remains.
An ended episode's slot goes to the next pending episode in the next round.
"""
from __future__ import annotations

import collections
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
from envtune_jax.progress import OnPhase
from models.generation.engine import GenerationEngine
from models.generation.sampling import SamplingParams
from rl.rollout_config import RolloutConfig


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
    shared_prompts: int = 0  # episodes started from another live sample's cached prompt (no prefill)
    slot_rounds: int = 0  # slots x decode calls
    live_slot_rounds: int = 0  # ... of which a slot had a live episode

    @property
    def slot_occupancy(self) -> float:
        """Share of the decode calls' slots that held a live episode."""
        return self.live_slot_rounds / self.slot_rounds if self.slot_rounds else 0.0


def _parse_step(episode: ToolEnvironment, conversation: TokenConversation):
    """(calls, format-error messages, text) of the conversation's latest assistant step.

    The calls are every call the official rule decodes, offered or not: the environment runs a call to
    a tool it does not offer into the official error string (an invalid call for R_tool, with a hint when
    hints are on). So only format errors are handed over as such: an unknown tool is a tool error, never
    also a format error (R_format counts format errors only)."""
    segment = conversation.boundaries[-1]
    text = conversation.sampled_text(segment)
    if episode.call_syntax == "compact":
        calls, errors = parse_compact_calls(text, sorted(episode.offered_tool_names()))
        return calls, errors, text
    parsed = conversation.parse_last_step(episode.offered_tool_names())
    errors = [error.message for error in parsed.format_errors]
    return list(parsed.well_formed_calls), errors, text


def run_rollouts(engine: GenerationEngine, tokenizer: Tokenizer, chat: ChatConfig, episodes: Sequence[ToolEnvironment],
                 groups: Sequence[int], sampling: SamplingParams, config: RolloutConfig, rng: int | jax.Array = 0,
                 keep_text: bool = False, stats: RolloutStats | None = None,
                 on_phase: OnPhase | None = None) -> list[Trajectory]:
    """Plays every episode to its end; returns one Trajectory per episode (same order).

    Continuous batching over the engine's B slots: episodes start in order as slots free up. Each round
    starts pending episodes in the free slots (one `refill`: the samples of a group that start together
    share one prefill), decodes up to `config.decode_chunk` tokens of every live episode's step, steps the
    environments of those whose step ended and appends the replies; an episode that ends gives its slot to
    the next one at once, instead of the slot idling until the longest episode of a fixed wave has ended,
    and a short step does not wait for the round's longest. An episode that starts while another sample
    of its prompt is live copies that slot's cached prompt (`engine.fork`) instead of prefilling it.
    The k-th refill draws slot s's PRNG key as fold_in(fold_in(rng, k), s); tokens are drawn per
    position, so chunking alone changes no sample.
    On an engine that cannot compact rows (`compact_rows` off, or the batch split over devices), a refill
    or extend of a few slots costs all B rows: the driver then refills only when every slot is free
    (fixed waves, the first refill's keys as before) and decodes whole steps.
    `on_phase("rollout" | "environment", episodes done, episodes in all)` is called before every decode
    call and every round of environment steps (envtune_jax/progress.py shows it).
    """
    stats = stats if stats is not None else RolloutStats()
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    step_max = min(_max_budget(sampling), config.max_new_tokens_per_step)
    context_cap = min(config.max_context_tokens, engine.max_cache_len)
    vocab = engine.config.vocab_size
    trajectories: list[Trajectory | None] = [None] * len(episodes)
    conversations: dict[int, TokenConversation] = {}
    prompts: dict[int, list[int]] = {}  # each started episode's prompt ids
    prompt_lengths: dict[int, int] = {}
    truncated = [False] * len(episodes)
    step_budget: dict[int, int] = {}  # episode -> token budget of its current step

    def next_step_budget(i: int) -> int:
        """The per-step budget clipped to what remains of episode i's response and context budgets."""
        used = len(conversations[i]) - prompt_lengths[i]
        return min(step_max, config.max_response_tokens - used, context_cap - len(conversations[i]))
    pending = collections.deque(range(len(episodes)))
    ready: collections.deque[int] = collections.deque()  # started episodes waiting for a shared-prefix region
    episode_in: list[int | None] = [None] * engine.batch_size  # the episode each slot plays
    partial: dict[int, list[int]] = {}  # slot -> tokens sampled so far in its unfinished step
    compacts = engine.compacts_rows
    max_steps = config.decode_chunk if config.decode_chunk > 0 and compacts else None
    state, refills = None, 0
    finished = 0
    on_phase = on_phase or (lambda phase, done=None, total=None: None)
    on_phase("rollout", 0, len(episodes))

    def finish(i: int, history_row=None) -> None:
        nonlocal finished
        trajectories[i] = _trajectory(episodes[i], conversations[i], groups[i], truncated[i], history_row, keep_text)
        finished += 1

    while pending or ready or any(i is not None for i in episode_in):
        t0 = time.perf_counter()
        free = [slot for slot, i in enumerate(episode_in) if i is None]
        if not compacts and len(free) < engine.batch_size:
            free = []  # waves: wait until every slot is free
        starts: dict[int, int] = {}  # slot -> episode
        while ready and len(starts) < len(free):
            starts[free[len(starts)]] = ready.popleft()
        while pending and len(starts) < len(free):
            i = pending.popleft()
            conversation = conversations[i] = TokenConversation(tokenizer, chat, vocab_size=vocab)
            conversation.start(episodes[i].reset(), episodes[i].tools())
            prompts[i] = conversation.ids
            prompt_lengths[i] = len(prompts[i])
            if prompt_lengths[i] > config.max_prompt_tokens:
                episodes[i].truncate(f"prompt of {prompt_lengths[i]} tokens exceeds max_prompt_tokens={config.max_prompt_tokens}")
                truncated[i] = True
            elif (budget := next_step_budget(i)) < 1:
                episodes[i].truncate(
                    f"prompt of {prompt_lengths[i]} tokens leaves no room in a context of {context_cap}")
                truncated[i] = True
            else:
                step_budget[i] = budget
            if episodes[i].done:  # nothing to generate: no slot
                finish(i)
                continue
            starts[free[len(starts)]] = i
        stats.environment_s += time.perf_counter() - t0
        if starts:
            t0 = time.perf_counter()
            if state is None:
                state = engine.new_state(max(prompt_lengths[i] for i in starts.values()))
            admitted = engine.admissible(state, {slot: prompts[i] for slot, i in starts.items()})
            for slot in sorted(set(starts) - admitted, reverse=True):  # no shared-prefix region free yet
                ready.appendleft(starts.pop(slot))
            refill_key = jax.random.fold_in(key, refills)
            holders = {slot: _prompt_holder(i, episode_in, starts, groups, prompts)
                       for slot, i in starts.items()} if compacts else {}
            forks = {slot: (holder, prompts[starts[slot]]) for slot, holder in holders.items() if holder is not None}
            fresh = {slot: prompts[i] for slot, i in starts.items() if slot not in forks}
            if fresh:
                state = engine.refill(state, fresh, refill_key)
            if forks:  # another sample of the same prompt is live: copy its cached prompt
                state = engine.fork(state, forks, refill_key)
                stats.shared_prompts += len(forks)
            refills += bool(starts)
            for slot, i in starts.items():
                episode_in[slot] = i
            stats.generation_s += time.perf_counter() - t0
        active = [slot for slot, i in enumerate(episode_in) if i is not None]
        if not active:
            continue
        on_phase("rollout", finished, len(episodes))
        t0 = time.perf_counter()
        budgets = tuple(step_budget[i] if i is not None else 0 for i in episode_in)
        step_sampling = dataclasses.replace(sampling, max_new_tokens=budgets)
        state, result = engine.decode(state, step_sampling, active=active, max_steps=max_steps)
        stats.generation_s += time.perf_counter() - t0
        stats.decode_calls += 1
        stats.slot_rounds += engine.batch_size
        stats.live_slot_rounds += len(active)
        on_phase("environment", finished, len(episodes))
        t0 = time.perf_counter()
        appends: dict[int, list[int]] = {}
        ended: list[int] = []
        for slot in active:
            i = episode_in[slot]
            sampled = partial.pop(slot, []) + result.tokens[slot, :result.num_tokens[slot]].tolist()
            if not result.finished[slot]:  # its step goes on in the next round
                partial[slot] = sampled
                continue
            stats.sampled_tokens += len(sampled)
            conversation, episode = conversations[i], episodes[i]
            conversation.append_sampled(sampled)
            calls, errors, text = _parse_step(episode, conversation)
            step = episode.step(text, calls, errors)
            if episode.done:
                ended.append(slot)
                continue
            segment = conversation.append_environment(step.messages)
            step_budget[i] = next_step_budget(i)
            if step_budget[i] < 1:
                used = len(conversation) - prompt_lengths[i]
                episode.truncate(f"token budget: {used} of {config.max_response_tokens} response tokens used, "
                                 f"{len(conversation)} of {context_cap} context tokens")
                truncated[i] = True
                ended.append(slot)
                continue
            appends[slot] = conversation.ids[segment.start:segment.end]
            stats.environment_tokens += segment.end - segment.start
        stats.environment_s += time.perf_counter() - t0
        if ended:  # the ended episodes' sampler records, before their slots are refilled
            history = engine.history(state)
            for slot in ended:
                finish(episode_in[slot], (history.tokens[slot], history.logprobs[slot], int(history.lengths[slot])))
                episode_in[slot] = None
            state = engine.release(state, ended)  # (shared prefixes: a region lives while a slot reads it)
        if appends:
            t0 = time.perf_counter()
            state = engine.extend(state, appends)
            stats.generation_s += time.perf_counter() - t0
    return trajectories


def _prompt_holder(i: int, episode_in, starts, groups, prompts) -> int | None:
    """A slot whose live episode (started before this round) has episode i's prompt, or None."""
    for slot, j in enumerate(episode_in):
        if j is not None and slot not in starts and groups[j] == groups[i] and prompts[j] == prompts[i]:
            return slot
    return None


def _trajectory(episode: ToolEnvironment, conversation: TokenConversation, group: int, truncated: bool,
                history_row, keep_text: bool) -> Trajectory:
    """The finished episode's trajectory; history_row: its slot's (tokens [S], sampler log-probs [S], length)."""
    ids, mask = conversation.arrays()
    logprobs = np.zeros(len(ids), np.float32)
    if mask.any():
        tokens_s, logprobs_s, length = history_row
        n = min(len(ids), length)
        if not np.array_equal(tokens_s[:n], ids[:n]):
            raise RuntimeError(f"episode {episode.episode_id}: sampler and conversation token ids diverged")
        logprobs[:n] = np.where(mask[:n] > 0, logprobs_s[:n], 0.0)
    return Trajectory(episode.episode_id, episode.category, group, ids, mask, logprobs, episode.outcome(), truncated,
                      conversation.text() if keep_text else "")


def _max_budget(sampling: SamplingParams) -> int:
    budget = sampling.max_new_tokens
    return int(budget if isinstance(budget, int) else max(budget))
