"""`GenerationEngine`: batched prefill / extend / decode over a fixed number of slots, on a mesh.

The engine owns B slots (a fixed batch, so the batch size never recompiles) and drives the compiled
programs of `steps.py` (extend, decode) and `state.py` (grow, reset, rewind, copy) from the host: it
validates requests, rounds shapes to buckets, grows the cache capacity when a request needs more room
(never past `max_cache_len`), splits long prompts/extensions into chunks of at most
`buckets.prefill_chunk` tokens, and pulls results back as NumPy. The state is donated to every call:
use only the state a call returns.

Continuous batching: `refill` empties chosen slots and prefills new prompts there while the other
slots keep their caches, and `decode(max_steps=k)` returns after k steps, so a driver may
interleave decoding with refilling finished slots. Finished or waiting slots sample nothing and
cost only their row of each decode step. `replace_tail` keeps a prefix of a slot's sequence and
prefills a new tail (a re-rendered conversation prefills only where it differs from the cache).

Shared prefixes (opt-in, prefix_engine.py): each distinct prompt is held once, in a prefix region that
its slots attend to; slots hold only their own tokens. The API stays the same, plus `release`
(slots whose episodes ended leave their region) and `admissible` (which refills a region can take now).

Extends run as planned by extend_plan.py: an append to a few slots runs on those rows only, and a long
append in one slot does not pad the short ones to its width. Slots refilled with the same prompt (the
G samples of a GRPO group) prefill it once and copy the slot (`copy_slots`). Both need the batch
unsharded on the mesh (one device, or tensor-parallel decoding); with the batch split over devices every
call runs all B slots, as each device computes its own rows anyway.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from envtune_jax.models.generation import steps
from envtune_jax.models.generation.buckets import BucketConfig, round_up
from envtune_jax.models.generation.extend_plan import ExtendCall, ExtendCosts, plan_extend, row_buckets
from envtune_jax.models.generation.prefix_config import SharedPrefixConfig
from envtune_jax.models.generation.prefix_engine import SharedPrefixSlots
from envtune_jax.models.generation.requests import (
    CacheFullError,
    GenerationInputError,
    active_mask,
    check_slot,
    check_tokens,
)
from envtune_jax.models.generation.results import (
    DecodeResult,
    History,
    collect_decode,
    concat_results,
    history,
    to_host,
)
from envtune_jax.models.generation.sampling import SamplingParams
from envtune_jax.models.generation.state import (
    GenerationState,
    copy_slots,
    empty_state,
    grow,
    reset_slots,
    rewind_slots,
)
from envtune_jax.models.generation.weights import SamplerWeights
from envtune_jax.models.kv_cache import CACHE_AXES

NO_STEP_LIMIT = 2**30


def _as_key(rng: int | jax.Array) -> jax.Array:
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng))
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    return jax.random.wrap_key_data(rng)


class GenerationEngine:
    """Sharded, jit-compiled generation for a Qwen3 model (see models/generation/__init__.py)."""

    def __init__(
        self,
        model: nnx.Module,
        *,
        batch_size: int,
        max_cache_len: int,
        mesh: jax.sharding.Mesh | None = None,
        cache_dtype: str = "bfloat16",
        buckets: BucketConfig = BucketConfig(),
        weight_rules: Mapping[str, tuple[str, ...]] | None = None,
        shared_prefix: SharedPrefixConfig | None = None,
    ):
        if batch_size < 1 or max_cache_len < 2:
            raise ValueError(f"need batch_size ≥ 1 and max_cache_len ≥ 2, got {batch_size}, {max_cache_len}")
        self.config = model.config
        self.batch_size = batch_size
        self.max_cache_len = max_cache_len
        self.mesh = mesh
        self.cache_dtype = jnp.dtype(cache_dtype)
        self.buckets = buckets
        self.weights = SamplerWeights(model, mesh, weight_rules)
        self.trace_counts: collections.Counter[str] = collections.Counter()
        self._cache_buckets = buckets.cache_lengths(max_cache_len)
        self._chunk_buckets = buckets.chunk_lengths()
        self._row_buckets = row_buckets(batch_size, buckets.compact_rows and self._batch_unsharded())
        self._costs = ExtendCosts.for_model(self.config, self.cache_dtype.itemsize)
        # token counts of extends: "appended" (real tokens), "computed" (rows x width of the calls run)
        self.extend_tokens: collections.Counter[str] = collections.Counter()
        self._extend = jax.jit(
            self._traced("extend", functools.partial(steps.extend_chunk, self.weights.graphdef)), donate_argnums=(1,)
        )
        self._extend_rows = jax.jit(
            self._traced("extend_rows", functools.partial(steps.extend_rows, self.weights.graphdef)),
            donate_argnums=(1,),
        )
        self._copy_rows = jax.jit(self._traced("copy_rows", copy_slots), donate_argnums=(0,))
        self._decode = jax.jit(
            self._traced("decode", functools.partial(steps.decode_loop, self.weights.graphdef)),
            donate_argnums=(1,),
            static_argnames=("greedy", "top_k", "use_top_p"),
        )
        self._grow = jax.jit(self._traced("grow", grow), static_argnums=(1,))
        self._reset = jax.jit(self._traced("reset", reset_slots), donate_argnums=(0,))
        self._rewind = jax.jit(self._traced("rewind", rewind_slots), donate_argnums=(0,))
        self._empty = jax.jit(self._traced("empty", self._empty_state), static_argnums=(0,))
        self._logits = jax.jit(self._traced("logits", self._next_token_logits))
        self.prefix_slots = SharedPrefixSlots(self, shared_prefix) if shared_prefix is not None else None

    # ---- compiled pieces -------------------------------------------------------------------
    def _traced(self, name: str, fn):
        """Wraps fn so that each trace (= each compilation) is counted in self.trace_counts."""

        @functools.wraps(fn)
        def counted(*args, **kwargs):
            self.trace_counts[name] += 1
            return fn(*args, **kwargs)

        return counted

    def _empty_state(self, capacity: int) -> GenerationState:
        """All slots empty, caches of `capacity` slots (shared prefixes: the regions; own caches start small)."""
        cfg = self.config
        own = capacity if self.prefix_slots is None else self._cache_buckets[0]
        state = empty_state(
            cfg.num_layers,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.hidden_size,
            self.batch_size,
            own,
            self.cache_dtype,
            jnp.dtype(cfg.dtype),
        )
        if self.prefix_slots is None:
            return state
        return dataclasses.replace(state, prefix=self.prefix_slots.empty_prefix(capacity, jnp.dtype(cfg.dtype)))

    def _next_token_logits(self, params, state: GenerationState) -> jax.Array:
        model = nnx.merge(self.weights.graphdef, params)
        return model.logits(state.hidden_bd[:, None, :])[:, 0]

    def _batch_unsharded(self) -> bool:
        """True when the mesh does not split the cache's batch axis (rows can then be gathered locally)."""
        if self.mesh is None:
            return True
        from envtune_jax.sharding import logical_to_spec

        spec = logical_to_spec(CACHE_AXES, (self.batch_size, 1, 1, 1), self.mesh)[0]
        axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
        return int(np.prod([self.mesh.shape[axis] for axis in axes])) == 1

    def _mesh_context(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    @property
    def compacts_rows(self) -> bool:
        """Extends of a few slots run on those rows only (and repeated prompts prefill once): True unless
        compact_rows is off or the mesh splits the batch over devices. Drivers refill single slots only then."""
        return len(self._row_buckets) > 1

    @property
    def num_compilations(self) -> int:
        return sum(self.trace_counts.values())

    # ---- host-side helpers -----------------------------------------------------------------
    def _ensure_capacity(self, state: GenerationState, needed: int) -> GenerationState:
        if needed > self.max_cache_len:
            raise CacheFullError(f"a sequence needs {needed} cache slots; max_cache_len is {self.max_cache_len}")
        if needed <= state.capacity:
            return state
        with self._mesh_context():
            return self._grow(state, round_up(needed, self._cache_buckets))

    # ---- public API ------------------------------------------------------------------------
    def new_state(self, capacity: int | None = None) -> GenerationState:
        """All slots empty, cache capacity rounded up to a bucket."""
        capacity = round_up(min(capacity or 1, self.max_cache_len), self._cache_buckets)
        with self._mesh_context():
            return self._empty(capacity)

    def start(self, prompts: Sequence[Sequence[int]], rng: int | jax.Array = 0) -> GenerationState:
        """Prefills prompts[i] into slot i (≤ batch_size prompts; other slots stay empty).

        Slot i's PRNG key is fold_in(rng, i).
        """
        if len(prompts) > self.batch_size:
            raise GenerationInputError(f"{len(prompts)} prompts for {self.batch_size} slots")
        longest = max((len(p) for p in prompts), default=1)
        return self.refill(self.new_state(longest), dict(enumerate(prompts)), rng)

    def refill(
        self, state: GenerationState, prompts: Mapping[int, Sequence[int]], rng: int | jax.Array = 0
    ) -> GenerationState:
        """Empties the given slots and prefills a new prompt in each (continuous batching).

        Slot s gets the PRNG key fold_in(rng, s): pass a fresh rng per refill for fresh samples.
        """
        slots = {
            check_slot(s, self.batch_size): check_tokens(p, self.config.vocab_size, f"prompt for slot {s}")
            for s, p in prompts.items()
        }
        for slot, tokens in slots.items():
            if tokens.size == 0:
                raise GenerationInputError(f"prompt for slot {slot} is empty (need ≥ 1 token to predict from)")
        if self.prefix_slots is not None:
            return self.prefix_slots.refill(state, slots, rng)
        state = self._reset_slots(state, slots, rng)
        if not self.compacts_rows:  # every call runs all B rows: a repeated prompt costs nothing extra
            return self.extend(state, slots)
        first_with: dict[bytes, int] = {}
        copies: dict[int, int] = {}  # slot -> the slot whose prefill of the same prompt it copies
        for slot, tokens in slots.items():
            copies_of = first_with.setdefault(tokens.tobytes(), slot)
            if copies_of != slot:
                copies[slot] = copies_of
        state = self.extend(state, {s: t for s, t in slots.items() if s not in copies})
        return self.copy_slots(state, copies) if copies else state

    def _reset_slots(self, state: GenerationState, slots, rng) -> GenerationState:
        """Empties the slots and gives slot s the PRNG key fold_in(rng, s)."""
        reset_b = np.zeros(self.batch_size, bool)
        reset_b[list(slots)] = True
        keys_b = jax.vmap(functools.partial(jax.random.fold_in, _as_key(rng)))(jnp.arange(self.batch_size))
        with self._mesh_context():
            return self._reset(state, jnp.asarray(reset_b), jax.random.key_data(keys_b))

    def fork(
        self, state: GenerationState, forks: Mapping[int, tuple[int, Sequence[int]]], rng: int | jax.Array = 0
    ) -> GenerationState:
        """Starts slot t on a prompt that slot s already holds, for each t: (s, prompt) in `forks`, instead of
        prefilling it: s's first len(prompt) cached tokens must be the prompt. Slot t gets s's cache (copied,
        cut back to the prompt; its last token is run again for its hidden state) and the PRNG key
        fold_in(rng, t), as `refill` would give it. For samples of a prompt that start after another sample
        of it did (continuous batching): one prefill serves them all while one of them is live."""
        targets = {
            check_slot(t, self.batch_size): (check_slot(s, self.batch_size), np.asarray(p, np.int32))
            for t, (s, p) in forks.items()
        }
        if not targets:
            return state
        if self.prefix_slots is not None:
            return self.prefix_slots.fork(state, targets, rng)
        lengths_b = to_host(state.cache.lengths)
        held = {}  # source -> its token row, read once however many targets fork from it
        for target, (source, prompt) in targets.items():
            if not 1 <= prompt.size <= lengths_b[source]:
                raise GenerationInputError(
                    f"fork: slot {source} holds {lengths_b[source]} tokens, not a prompt of "
                    f"{prompt.size} for slot {target}"
                )
            if source not in held:  # the whole row: one shape per capacity
                held[source] = to_host(state.tokens_bs[source])
            if not np.array_equal(held[source][: prompt.size], prompt):
                raise GenerationInputError(f"fork: slot {source} does not start with slot {target}'s prompt")
        state = self._reset_slots(state, targets, rng)
        state = self.copy_slots(state, {t: s for t, (s, _) in targets.items()})
        return self.replace_tail(state, {t: (p.size - 1, p[-1:]) for t, (_, p) in targets.items()})

    def copy_slots(self, state: GenerationState, copies: Mapping[int, int]) -> GenerationState:
        """Makes slot t a copy of slot s for each t: s in `copies` (its cache, sequence and turn), keeping t's
        own PRNG key: a prompt prefilled once serves several samples (prefix sharing)."""
        if self.prefix_slots is not None:
            raise GenerationInputError("copy_slots: with shared prefixes a slot joins its prompt's region (refill)")
        pairs = sorted((check_slot(t, self.batch_size), check_slot(s, self.batch_size)) for t, s in copies.items())
        if any(t == s for t, s in pairs) or {t for t, _ in pairs} & {s for _, s in pairs}:
            raise GenerationInputError(f"copy_slots: a slot is both copied and overwritten in {dict(copies)}")
        if not pairs:
            return state
        rows = round_up(len(pairs), row_buckets(self.batch_size))
        targets = np.full(rows, self.batch_size, np.int32)
        sources = np.zeros(rows, np.int32)
        targets[: len(pairs)], sources[: len(pairs)] = zip(*pairs)
        with self._mesh_context():
            return self._copy_rows(state, jnp.asarray(sources), jnp.asarray(targets))

    def extend(self, state: GenerationState, appends: Mapping[int, Sequence[int]]) -> GenerationState:
        """Appends token ids to the given slots' sequences (ragged lengths) and starts a new turn there.

        Prefills in chunks of ≤ buckets.prefill_chunk tokens, on the appended-to rows only where that is
        cheaper (extend_plan.py); never re-reads the cached history.
        """
        appends = {
            check_slot(s, self.batch_size): check_tokens(t, self.config.vocab_size, f"tokens for slot {s}")
            for s, t in appends.items()
        }
        counts_b = np.zeros(self.batch_size, np.int32)
        for slot, tokens in appends.items():
            counts_b[slot] = tokens.size
        if not counts_b.any():
            return state
        lengths_b = to_host(state.cache.lengths)
        if self.prefix_slots is not None and (self._offsets(state) + lengths_b + counts_b).max() > self.max_cache_len:
            raise CacheFullError(f"a sequence needs more than max_cache_len={self.max_cache_len} positions")
        state = self._ensure_capacity(state, int((lengths_b + counts_b).max()))
        params = self.weights.params()
        for call in plan_extend(
            counts_b,
            chunk=self.buckets.prefill_chunk,
            chunk_buckets=self._chunk_buckets,
            rows_ladder=self._row_buckets,
            capacity=state.capacity,
            costs=self._costs,
        ):
            state = self._run_extend_call(params, state, call, appends)
        return state

    def _run_extend_call(
        self, params, state: GenerationState, call: ExtendCall, appends: Mapping[int, np.ndarray]
    ) -> GenerationState:
        compacted = call.compacted(self.batch_size)
        tokens = np.zeros((call.rows, call.width), np.int32)
        num_new = np.zeros(call.rows, np.int32)
        rows = np.full(call.rows, self.batch_size, np.int32)  # compacted: the slot of each row (B = padding)
        for u, (slot, offset, count) in enumerate(zip(call.slots, call.offsets, call.counts)):
            row = u if compacted else slot
            rows[row] = slot
            tokens[row, :count] = appends[slot][offset : offset + count]
            num_new[row] = count
        self.extend_tokens["appended"] += sum(call.counts)
        self.extend_tokens["computed"] += call.rows * call.width
        with self._mesh_context():
            if compacted:
                return self._extend_rows(params, state, jnp.asarray(rows), jnp.asarray(tokens), jnp.asarray(num_new))
            return self._extend(params, state, jnp.asarray(tokens), jnp.asarray(num_new))

    def replace_tail(self, state: GenerationState, tails: Mapping[int, tuple[int, Sequence[int]]]) -> GenerationState:
        """For each slot: keep the first `keep` cached tokens, drop the rest, append `tokens` (≥ 1) as a new turn.

        `tails` maps slot → (keep, tokens). A conversation re-rendered as text (the official BFCL protocol)
        usually repeats the cached tokens and differs only at its end: only the differing tail is prefilled.
        """
        keep_b = np.full(self.batch_size, -1, np.int32)
        offsets_b = self._offsets(state)  # a shared prompt is kept whole: only a slot's own tokens are cut
        lengths_b = to_host(state.cache.lengths) + offsets_b
        appends = {}
        for slot, (keep, tokens) in tails.items():
            slot = check_slot(slot, self.batch_size)
            if not offsets_b[slot] <= keep <= lengths_b[slot]:
                raise GenerationInputError(
                    f"slot {slot} holds {lengths_b[slot]} tokens"
                    f"{f' ({offsets_b[slot]} of them a shared prompt)' if offsets_b[slot] else ''}"
                    f"; cannot keep {keep}"
                )
            if len(tokens) == 0:
                raise GenerationInputError(f"slot {slot}: the new tail is empty (need ≥ 1 token to predict from)")
            keep_b[slot] = keep - offsets_b[slot]
            appends[slot] = tokens
        with self._mesh_context():
            state = self._rewind(state, jnp.asarray(keep_b))
        return self.extend(state, appends)

    def decode(
        self, state: GenerationState, sampling: SamplingParams, active=None, max_steps: int | None = None
    ) -> tuple[GenerationState, DecodeResult]:
        """Samples for the active slots (default: all non-empty) until each ends its turn.

        A turn ends on a stop token, after max_new_tokens tokens (counted from the turn's start,
        across calls), or when the cache is full. `max_steps` bounds the steps of this call (for
        streaming); call again to continue. `active`: bool mask [B] or a list of slot indices.
        """
        lengths_b = to_host(state.cache.lengths)
        offsets_b = self._offsets(state)
        active_b = active_mask(active, lengths_b + offsets_b)
        budgets_b = sampling.budgets(self.batch_size)
        turn_start_b = to_host(state.turn_start_b)
        generated_b = lengths_b - turn_start_b
        if self.prefix_slots is not None:  # a turn ends where the whole sequence fills max_cache_len, as without
            budgets_b = np.minimum(budgets_b, np.maximum(self.max_cache_len - offsets_b - turn_start_b, 0))
        live_b = active_b & ~to_host(state.done_b) & (lengths_b + offsets_b > 0)
        step_limit = NO_STEP_LIMIT if max_steps is None else int(max_steps)
        if step_limit < 0:
            raise GenerationInputError(f"max_steps must be ≥ 0, got {max_steps}")
        if live_b.any():  # room for the whole turn (not just max_steps), so streaming does not regrow
            needed = int((lengths_b + np.maximum(budgets_b - generated_b, 0))[live_b].max())
            state = self._ensure_capacity(state, min(needed, self.max_cache_len))
        greedy, top_k, use_top_p = sampling.static_key(self.config.vocab_size)
        with self._mesh_context():
            state = self._decode(
                self.weights.params(),
                state,
                jnp.asarray(active_b),
                jnp.asarray(budgets_b),
                jnp.asarray(sampling.stop_ids_array()),
                jnp.float32(sampling.temperature),
                jnp.float32(sampling.top_p),
                jnp.int32(min(step_limit, NO_STEP_LIMIT)),
                greedy=greedy,
                top_k=top_k,
                use_top_p=use_top_p,
            )
        return state, collect_decode(state, lengths_b + offsets_b)

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingParams, rng: int | jax.Array = 0
    ) -> DecodeResult:
        """One turn for each prompt (in groups of batch_size); rows follow the prompts' order."""
        key = _as_key(rng)
        parts = []
        for group, first in enumerate(range(0, len(prompts), self.batch_size)):
            chunk = prompts[first : first + self.batch_size]
            budgets = sampling.max_new_tokens
            if not isinstance(budgets, int):
                budgets = tuple(budgets[first : first + len(chunk)]) + (0,) * (self.batch_size - len(chunk))
            params = SamplingParams(
                sampling.temperature, sampling.top_k, sampling.top_p, sampling.greedy, budgets, sampling.stop_token_ids
            )
            state = self.start(chunk, jax.random.fold_in(key, group))
            _, result = self.decode(state, params)
            parts.append((result, len(chunk)))
        return concat_results(parts)

    def release(self, state: GenerationState, slots: Sequence[int]) -> GenerationState:
        """Empties slots whose episodes ended; with shared prefixes they also leave their prompt's region, which
        can take another prompt once none of its slots is left."""
        if self.prefix_slots is not None:
            return self.prefix_slots.release(state, slots)
        keep_b = np.full(self.batch_size, -1, np.int32)
        keep_b[[check_slot(s, self.batch_size) for s in slots]] = 0
        if (keep_b < 0).all():
            return state
        with self._mesh_context():
            return self._rewind(state, jnp.asarray(keep_b))

    def admissible(self, state: GenerationState, prompts: Mapping[int, Sequence[int]]) -> set[int]:
        """The slots of `prompts` (slot -> prompt) that `refill` can start now: all of them without shared
        prefixes; with them, those that find a region (a live one holding their prompt, or a free one)."""
        if self.prefix_slots is None:
            return {check_slot(s, self.batch_size) for s in prompts}
        return self.prefix_slots.admissible(state, prompts)

    def _offsets(self, state: GenerationState) -> np.ndarray:
        """[B] the shared-prompt tokens before each slot's own cached tokens (zeros without shared prefixes)."""
        if self.prefix_slots is None:
            return np.zeros(self.batch_size, np.int32)
        return self.prefix_slots.offsets(state)

    def next_token_logits(self, state: GenerationState) -> jax.Array:
        """Logits [B, V] (fp32) of the token following each sequence (what decode samples from)."""
        with self._mesh_context():
            return self._logits(self.weights.params(), state)

    def history(self, state: GenerationState) -> History:
        """Every sequence in full (tokens, sampler log-probs, sampled mask, lengths) as NumPy."""
        return history(state)
