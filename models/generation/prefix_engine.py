"""The shared-prefix half of `GenerationEngine`: each distinct prompt lives once, in a prefix region.

Opt-in (`GenerationEngine(..., shared_prefix=SharedPrefixConfig(...))`, or `sampler.shared_prefix: true`).
The engine's API is unchanged; what differs underneath:
- `refill` places the slots of each distinct prompt (prefix_regions.py): slots join a live region that
  holds that prompt, or a free region where the prompt is prefilled once; every slot starts with an
  empty own cache, and its first token is predicted from the region's last prompt token;
- `fork(t: (s, prompt))` is a refill that must find `prompt` held by s's region (no model call);
- `release(slots)` detaches slots whose episodes ended: a region lives while any slot reads it;
- `admissible(prompts)` says which slots a refill could place now (the others wait for a region);
- extend / decode run on the slots' own caches, attending [prefix; own tokens] (prefix_attention.py);
  `history` gives whole sequences (prompt + own tokens), positions and PRNG keys count the prompt,
  and `max_cache_len` bounds the whole sequence, as without sharing.
Memory: R regions x P prompt slots + B slots x S own slots, instead of B x (P + S).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from envtune_jax.models.generation import prefix_steps
from envtune_jax.models.generation.buckets import round_up
from envtune_jax.models.generation.extend_plan import plan_extend, row_buckets
from envtune_jax.models.generation.prefix_config import SharedPrefixConfig
from envtune_jax.models.generation.prefix_regions import RegionPlan, plan_regions
from envtune_jax.models.generation.prefix_state import PrefixState, empty_prefix, grow_prefix
from envtune_jax.models.generation.requests import CacheFullError, GenerationInputError, check_slot
from envtune_jax.models.generation.results import to_host
from envtune_jax.models.generation.state import GenerationState, release_slots
from envtune_jax.models.kv_cache import CACHE_AXES


def _batch_shards(mesh, rows: int) -> int:
    """How many devices split `rows` cache rows (1 without a mesh)."""
    if mesh is None:
        return 1
    from envtune_jax.sharding import logical_to_spec

    spec = logical_to_spec(CACHE_AXES, (rows, 1, 1, 1), mesh)[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return int(np.prod([mesh.shape[axis] for axis in axes]))


class SharedPrefixSlots:
    """Owned by a GenerationEngine in shared-prefix mode; see the module docstring."""

    def __init__(self, engine, config: SharedPrefixConfig):
        self.engine = engine
        self.config = config
        self.num_regions = config.num_regions(engine.batch_size)
        self.shards = _batch_shards(engine.mesh, engine.batch_size)
        if _batch_shards(engine.mesh, self.num_regions) != self.shards:
            raise ValueError(
                f"{self.num_regions} prefix regions do not split over the {self.shards} batch shards "
                f"as the {engine.batch_size} slots do: choose a multiple of {self.shards}"
            )
        if engine.config.decode_attention == "pallas" and engine.mesh is not None and engine.mesh.size > 1:
            raise ValueError(
                "decode_attention='pallas' with shared prefixes runs on one device only; use 'reference' on a mesh"
            )
        traced, graphdef = engine._traced, engine.weights.graphdef
        prefill = functools.partial(prefix_steps.prefill_region_rows, graphdef)
        self._prefill = jax.jit(traced("prefill_regions", prefill), donate_argnums=(1,))
        self._reset = jax.jit(traced("reset_regions", prefix_steps.reset_regions), donate_argnums=(0,))
        self._attach = jax.jit(traced("attach", prefix_steps.attach_slots), donate_argnums=(0,))
        self._release = jax.jit(traced("release", release_slots), donate_argnums=(0,))
        self._grow = jax.jit(traced("grow_prefix", _grow_state), static_argnums=(1,))
        self._region_rows = row_buckets(self.num_regions)

    # ---- state ------------------------------------------------------------------------------
    def empty_prefix(self, capacity: int, hidden_dtype) -> PrefixState:
        cfg = self.engine.config
        return empty_prefix(
            cfg.num_layers,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.hidden_size,
            self.num_regions,
            self.config.lanes,
            self.engine.batch_size,
            capacity,
            self.engine.cache_dtype,
            hidden_dtype,
            self.config.attention,
        )

    def offsets(self, state: GenerationState) -> np.ndarray:
        """[B] each slot's prompt length held in its region (0 without one), on the host."""
        lane_b = to_host(state.prefix.lane_b)
        lengths_r = to_host(state.prefix.regions.lengths)
        region_b = lane_b // self.config.lanes
        return np.where(region_b < self.num_regions, lengths_r[np.minimum(region_b, self.num_regions - 1)], 0)

    # ---- planning ---------------------------------------------------------------------------
    def _plan(self, state: GenerationState, prompts: Mapping[int, np.ndarray]) -> RegionPlan:
        lengths_r = to_host(state.prefix.regions.lengths)
        held: dict[int, np.ndarray] = {}

        def held_prompt(region: int) -> np.ndarray:
            if region not in held:
                held[region] = to_host(state.prefix.tokens_rp[region])[: lengths_r[region]]
            return held[region]

        return plan_regions(
            prompts,
            to_host(state.prefix.lane_b),
            num_regions=self.num_regions,
            lanes=self.config.lanes,
            shards=self.shards,
            held_prompt=held_prompt,
        )

    def admissible(self, state: GenerationState, prompts: Mapping[int, Sequence[int]]) -> set[int]:
        """The slots of `prompts` that a refill would place now."""
        plan = self._plan(
            state, {check_slot(s, self.engine.batch_size): np.asarray(p, np.int32) for s, p in prompts.items()}
        )
        return set(plan.lanes)

    # ---- the API behind the engine's ----------------------------------------------------------
    def refill(self, state: GenerationState, slots: Mapping[int, np.ndarray], rng) -> GenerationState:
        engine = self.engine
        for slot, tokens in slots.items():
            if tokens.size > engine.max_cache_len:
                raise CacheFullError(
                    f"prompt for slot {slot} has {tokens.size} tokens; max_cache_len is {engine.max_cache_len}"
                )
        plan = self._plan(state, slots)
        if plan.unplaced:
            raise GenerationInputError(
                f"no free prefix region for slots {list(plan.unplaced)} ({self.num_regions} regions of "
                f"{self.config.lanes} lanes): release ended slots first (engine.release) or use more regions"
            )
        state = engine._reset_slots(state, slots, rng)
        state = self.release(state, list(slots))
        if plan.prefill:
            state = self._prefill_regions(state, plan.prefill)
        pairs = sorted(plan.lanes.items())  # B rows (padding: slot B), one program
        slots_u = np.full(engine.batch_size, engine.batch_size, np.int32)
        lanes_u = np.zeros(engine.batch_size, np.int32)
        slots_u[: len(pairs)], lanes_u[: len(pairs)] = zip(*pairs)
        with engine._mesh_context():
            return self._attach(state, jnp.asarray(slots_u), jnp.asarray(lanes_u))

    def _prefill_regions(self, state: GenerationState, prompts: Mapping[int, np.ndarray]) -> GenerationState:
        engine = self.engine
        longest = max(p.size for p in prompts.values())
        if longest > state.prefix.capacity:
            with engine._mesh_context():
                state = self._grow(state, round_up(longest, engine._cache_buckets))
        reset_r = np.zeros(self.num_regions, bool)
        reset_r[list(prompts)] = True
        params = engine.weights.params()
        counts_r = np.zeros(self.num_regions, np.int32)
        for region, prompt in prompts.items():
            counts_r[region] = prompt.size
        with engine._mesh_context():
            state = self._reset(state, jnp.asarray(reset_r))
            for call in plan_extend(
                counts_r,
                chunk=engine.buckets.prefill_chunk,
                chunk_buckets=engine._chunk_buckets,
                rows_ladder=self._region_rows,
                capacity=state.prefix.capacity,
                costs=engine._costs,
            ):
                tokens = np.zeros((call.rows, call.width), np.int32)
                num_new = np.zeros(call.rows, np.int32)
                rows = np.full(call.rows, self.num_regions, np.int32)
                for u, (region, offset, count) in enumerate(zip(call.slots, call.offsets, call.counts)):
                    rows[u], num_new[u] = region, count
                    tokens[u, :count] = prompts[region][offset : offset + count]
                engine.extend_tokens["prefix_appended"] += sum(call.counts)
                engine.extend_tokens["prefix_computed"] += call.rows * call.width
                state = self._prefill(params, state, jnp.asarray(rows), jnp.asarray(tokens), jnp.asarray(num_new))
        return state

    def fork(self, state: GenerationState, forks: Mapping[int, tuple[int, np.ndarray]], rng) -> GenerationState:
        """Each target joins a region holding its prompt; its source's region must hold exactly that prompt."""
        lane_b = to_host(state.prefix.lane_b)
        lengths_r = to_host(state.prefix.regions.lengths)
        for target, (source, prompt) in forks.items():
            region = lane_b[source] // self.config.lanes
            held = (
                to_host(state.prefix.tokens_rp[region])[: lengths_r[region]]
                if region < self.num_regions
                else np.zeros(0, np.int32)
            )
            if not np.array_equal(held, prompt):
                raise GenerationInputError(
                    f"fork: slot {source}'s shared prompt is not slot {target}'s prompt "
                    f"({held.size} vs {prompt.size} tokens)"
                )
        return self.refill(state, {t: p for t, (_, p) in forks.items()}, rng)

    def release(self, state: GenerationState, slots: Sequence[int]) -> GenerationState:
        release_b = np.zeros(self.engine.batch_size, bool)
        release_b[[check_slot(s, self.engine.batch_size) for s in slots]] = True
        if not release_b.any():
            return state
        with self.engine._mesh_context():
            return self._release(state, jnp.asarray(release_b))


def _grow_state(state: GenerationState, capacity: int) -> GenerationState:
    return dataclasses.replace(state, prefix=grow_prefix(state.prefix, capacity))
