"""The episode runner: many multi-turn episodes played over a generation engine's B slots.

A protocol owns the episodes (their environments, text and token ids); the runner owns how they are played
on the engine. For episode i of `count` (started in order, 0 first):

- `protocol.begin(i) -> StepRequest | None`: starts the episode; its first request, or None if it ended
  before any step;
- `protocol.step_ended(i, step_ids) -> StepRequest | None`: the step's ids exactly as sampled (with the stop
  token when one ended it); the next request, or None once the episode has ended;
- `protocol.finish(i, sampler_row)`: once the episode has ended. `sampler_row()` reads its slot's engine
  history (valid during the call only); None if the episode never held a slot.

A request is the whole sequence the next step continues and the step's token budget. The runner compares it
with what the episode's slot holds and computes only the difference: a sequence that continues the cache is
appended (`extend`: training's token-level protocol, environment tokens after the exact sampled ids), one that
differs earlier gets its differing tail replaced (`replace_tail`: evaluation's re-render protocol, whose
official prompt is rendered again from text at every step). With shared prefixes an episode's first prompt
is its slot's prefix region, which cannot be cut: a request that changes it restarts the episode in a slot
(released, then a fresh refill).

What the runner owns:
- slots: an episode starts when a slot is free; an ended episode's slot is released (`engine.release`: with
  shared prefixes a region lives while any of its slots is live) and goes to the next episode at once;
- the queue of waiting episodes, and of begun ones the engine cannot place yet (`engine.admissible`: no
  prefix region free), which start first, in order, once it can;
- prompt sharing: the starts of one round are one `refill` (the engine prefills a prompt given to several
  slots once); an episode whose first prompt a live slot started with copies that slot's cache (`fork`);
- streamed decoding: each decode call runs at most `decode_chunk` tokens of every live step (0: until every
  live step has ended); a step that has not ended keeps its tokens in its slot and goes on in the next call,
  while the episodes whose step ended step their environments and rejoin. Tokens are drawn per position, so
  chunking changes no sample;
- on an engine that cannot compact rows (`compact_rows` off, or the batch split over devices), where a refill
  or extend of a few slots costs all B rows, fixed waves: starts only when every slot is free, whole steps;
- PRNG keys: the k-th refill (or fork) gives slot s the key fold_in(fold_in(rng, k), s);
- statistics (`RunnerStats`) and progress: `on_phase("rollout", done, count)` before every decode call (and
  once at the start), `on_phase("environment", done, count)` before every round of ended steps.
The runner reads no text: parsing a step's calls is the protocol's, through its environment.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Callable, NamedTuple, Protocol, Sequence

import jax
import numpy as np

from envtune_jax.models.generation.engine import GenerationEngine
from envtune_jax.models.generation.sampling import SamplingParams
from envtune_jax.progress import OnPhase


@dataclasses.dataclass(frozen=True)
class StepRequest:
    """What an episode asks for next: one step continuing `ids` of at most `max_new_tokens` tokens."""

    ids: Sequence[int]  # [T] the episode's whole sequence so far (prompt, earlier steps, environment replies)
    max_new_tokens: int


class SamplerRow(NamedTuple):
    """One slot's engine history: what the trainer needs of a finished episode."""

    tokens_s: np.ndarray  # [S] int32 (meaningful below length)
    logprobs_s: np.ndarray  # [S] float32 sampler log-prob of sampled tokens, 0 elsewhere
    sampled_s: np.ndarray  # [S] bool: sampled by the engine
    length: int


class EpisodeProtocol(Protocol):
    def begin(self, i: int) -> StepRequest | None: ...

    def step_ended(self, i: int, step_ids: list[int]) -> StepRequest | None: ...

    def finish(self, i: int, sampler_row: Callable[[], SamplerRow] | None) -> None: ...


@dataclasses.dataclass
class RunnerStats:
    """What a run cost (accumulates over runs when passed again)."""

    decode_calls: int = 0
    slot_steps: int = 0  # slots x decode steps run
    sampled_tokens: int = 0  # ... of which a slot sampled a token of a live step
    prompt_tokens: int = 0  # tokens of every request (what prefilling each step's sequence in full costs)
    prefilled_tokens: int = 0  # tokens handed to the engine to compute (a prompt repeated in one refill once)
    shared_prompts: int = 0  # episodes started from another live slot's cached prompt (fork, no prefill)
    restarts: int = 0  # requests that changed a first prompt held in a prefix region (prefilled afresh)
    generation_s: float = 0.0  # in engine calls
    environment_s: float = 0.0  # in the protocol (environment steps, rendering, tokenizing)

    @property
    def slot_occupancy(self) -> float:
        """Share of the decode steps' slots that sampled a token of a live step."""
        return self.sampled_tokens / self.slot_steps if self.slot_steps else 0.0


@dataclasses.dataclass
class _Slot:
    episode: int
    start: list[int] | None  # the episode's first prompt, while the slot's cache begins with it
    cached: list[int]  # the ids the slot's cache holds
    budget: int  # token budget of the current step
    step: list[int] = dataclasses.field(default_factory=list)  # tokens sampled so far in the current step


def _quiet(phase: str, done: int | None = None, total: int | None = None) -> None:
    return None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    mismatch = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(mismatch[0])


class EpisodeRunner:
    """Plays a protocol's episodes on `engine` with `sampling` (its `max_new_tokens` is replaced by each step's
    budget). `reuse_cache=False` prefills every request in full (the plain path the cache reuse is tested
    against)."""

    def __init__(
        self, engine: GenerationEngine, sampling: SamplingParams, decode_chunk: int = 128, reuse_cache: bool = True
    ):
        if decode_chunk < 0:
            raise ValueError(f"decode_chunk must be ≥ 0 (0: decode whole steps), got {decode_chunk}")
        self.engine, self.sampling, self.reuse_cache = engine, sampling, reuse_cache
        self.max_steps = decode_chunk if decode_chunk > 0 and engine.compacts_rows else None

    def run(
        self,
        protocol: EpisodeProtocol,
        count: int,
        rng: int | jax.Array = 0,
        stats: RunnerStats | None = None,
        on_phase: OnPhase | None = None,
    ) -> RunnerStats:
        """Plays episodes 0..count-1 to their ends; returns the statistics (`stats`, updated, if given)."""
        self.protocol, self.count = protocol, count
        self.stats = stats if stats is not None else RunnerStats()
        self.on_phase = on_phase or _quiet
        self.key = jax.random.key(rng) if isinstance(rng, int) else rng
        self.waiting = collections.deque(range(count))  # not begun
        self.ready: collections.deque[tuple[int, StepRequest]] = collections.deque()  # begun, not placed yet
        self.slots: list[_Slot | None] = [None] * self.engine.batch_size
        self.state, self.refills, self.done = None, 0, 0
        self.on_phase("rollout", 0, count)
        while self.waiting or self.ready or self._live():
            self._start_waiting()
            live = self._live()
            if not live:
                if self.ready:
                    raise RuntimeError("the engine admits none of the waiting episodes with every slot free")
                continue
            self.on_phase("rollout", self.done, count)
            ended = self._decode(live)
            self.on_phase("environment", self.done, count)
            self._continue(ended)
        return self.stats

    def _live(self) -> list[int]:
        return [s for s, slot in enumerate(self.slots) if slot is not None]

    def _ask(self, method, *args) -> StepRequest | None:
        """A protocol call, timed as environment work; the request's tokens are counted."""
        t0 = time.perf_counter()
        request = method(*args)
        self.stats.environment_s += time.perf_counter() - t0
        if request is not None:
            self.stats.prompt_tokens += len(request.ids)
        return request

    def _finish(self, i: int, sampler_row: Callable[[], SamplerRow] | None) -> None:
        self.protocol.finish(i, sampler_row)
        self.done += 1

    def _start_waiting(self) -> None:
        """Gives the free slots to the placed-later episodes first, then to waiting ones (in order)."""
        free = [s for s, slot in enumerate(self.slots) if slot is None]
        if not self.engine.compacts_rows and len(free) < self.engine.batch_size:
            return  # waves: wait until every slot is free
        starts: dict[int, tuple[int, StepRequest]] = {}
        while self.ready and len(starts) < len(free):
            starts[free[len(starts)]] = self.ready.popleft()
        while self.waiting and len(starts) < len(free):
            i = self.waiting.popleft()
            request = self._ask(self.protocol.begin, i)
            if request is None:  # ended before any step: no slot
                self._finish(i, None)
                continue
            starts[free[len(starts)]] = (i, request)
        if starts:
            self._place(starts)

    def _place(self, starts: dict[int, tuple[int, StepRequest]]) -> None:
        """Starts episodes in free slots (slot -> (episode, request)): the engine's refill, or a fork of a live
        slot that started with the same prompt; the ones the engine cannot place yet wait, first in line."""
        t0 = time.perf_counter()
        if self.state is None:
            self.state = self.engine.new_state(max(len(request.ids) for _, request in starts.values()))
        admitted = self.engine.admissible(self.state, {slot: request.ids for slot, (_, request) in starts.items()})
        for slot in sorted(set(starts) - admitted, reverse=True):
            self.ready.appendleft(starts.pop(slot))
        if not starts:
            return
        key = jax.random.fold_in(self.key, self.refills)
        self.refills += 1
        forks, fresh = {}, {}
        for slot, (_, request) in starts.items():
            holder = self._holder(request.ids) if self.engine.compacts_rows else None
            if holder is not None:
                forks[slot] = (holder, request.ids)
            else:
                fresh[slot] = request.ids
        if fresh:
            self.state = self.engine.refill(self.state, fresh, key)
            self.stats.prefilled_tokens += sum(len(ids) for ids in {tuple(ids): ids for ids in fresh.values()}.values())
        if forks:  # another episode started with this prompt and is live: copy its cached prompt
            self.state = self.engine.fork(self.state, forks, key)
            self.stats.shared_prompts += len(forks)
            self.stats.prefilled_tokens += len(forks)  # a fork computes the prompt's last token again
        for slot, (i, request) in starts.items():
            ids = list(request.ids)
            self.slots[slot] = _Slot(i, ids, list(ids), request.max_new_tokens)
        self.stats.generation_s += time.perf_counter() - t0

    def _holder(self, prompt: Sequence[int]) -> int | None:
        """A live slot (placed in an earlier round) whose episode started with `prompt` there, or None."""
        prompt = list(prompt)
        for s, slot in enumerate(self.slots):
            if slot is not None and slot.start == prompt:
                return s
        return None

    def _decode(self, live: list[int]) -> list[int]:
        """One decode call (≤ max_steps tokens of every live step); the slots whose step ended."""
        t0 = time.perf_counter()
        budgets = tuple(slot.budget if slot is not None else 0 for slot in self.slots)
        sampling = dataclasses.replace(self.sampling, max_new_tokens=budgets)
        self.state, result = self.engine.decode(self.state, sampling, active=live, max_steps=self.max_steps)
        self.stats.generation_s += time.perf_counter() - t0
        self.stats.decode_calls += 1
        self.stats.slot_steps += self.engine.batch_size * int(result.num_tokens[live].max(initial=0))
        ended = []
        for s in live:
            tokens = result.tokens[s, : result.num_tokens[s]].tolist()
            slot = self.slots[s]
            slot.step += tokens
            slot.cached += tokens
            self.stats.sampled_tokens += len(tokens)
            if result.finished[s]:
                ended.append(s)
        return ended

    def _continue(self, ended: list[int]) -> None:
        """Hands the ended steps to the protocol; releases the ended episodes' slots, feeds the others."""
        requests, finished = {}, []
        for s in ended:
            slot = self.slots[s]
            step_ids, slot.step = slot.step, []
            request = self._ask(self.protocol.step_ended, slot.episode, step_ids)
            if request is None:
                finished.append(s)
            else:
                requests[s] = request
        if finished:  # their sampler records, before the slots are released
            history = None

            def row_of(s: int) -> Callable[[], SamplerRow]:
                def read() -> SamplerRow:
                    nonlocal history
                    history = history or self.engine.history(self.state)
                    return SamplerRow(
                        history.tokens[s], history.logprobs[s], history.sampled[s], int(history.lengths[s])
                    )

                return read

            for s in finished:
                self._finish(self.slots[s].episode, row_of(s))
                self.slots[s] = None
            self.state = self.engine.release(self.state, finished)
        if requests:
            self._feed(requests)

    def _feed(self, requests: dict[int, StepRequest]) -> None:
        """Brings each slot's cache to its episode's next request, computing only where they differ."""
        tails, restarts, appends_only = {}, {}, True
        for s, request in requests.items():
            slot, ids = self.slots[s], list(request.ids)
            keep = min(common_prefix(slot.cached, ids) if self.reuse_cache else 0, len(ids) - 1)
            if slot.start is not None and keep < len(slot.start):  # the request changes the first prompt
                if self.engine.prefix_slots is not None:  # ... which is the slot's prefix region: start again
                    restarts[s] = (slot.episode, request)
                    continue
                slot.start = None  # the cache no longer begins with it: nothing forks from this slot
            appends_only &= keep == len(slot.cached)
            tails[s] = (keep, ids[keep:])
            slot.cached, slot.budget = ids, request.max_new_tokens
            self.stats.prefilled_tokens += len(ids) - keep
        if restarts:
            self.stats.restarts += len(restarts)
            self.state = self.engine.release(self.state, list(restarts))
            for s in restarts:
                self.slots[s] = None
            self._place(restarts)
        if tails:
            t0 = time.perf_counter()
            if appends_only:
                self.state = self.engine.extend(self.state, {s: tail for s, (_, tail) in tails.items()})
            else:
                self.state = self.engine.replace_tail(self.state, tails)
            self.stats.generation_s += time.perf_counter() - t0
